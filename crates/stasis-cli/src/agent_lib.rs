//! Finding the agent library: it lies next to the stasis binary, wherever
//! the two were installed or copied together.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

pub const AGENT_FILE: &str = "libstasis_agent.so";

/// The agent next to the running binary (symbolic links resolved).
pub fn find() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot tell where the stasis binary is")?;
    let exe = exe.canonicalize().with_context(|| format!("cannot resolve {}", exe.display()))?;
    let agent = exe.with_file_name(AGENT_FILE);
    if !agent.is_file() {
        bail!("the agent library {} is missing (it must lie next to {})", agent.display(), exe.display());
    }
    // LD_PRELOAD splits its list at spaces and colons.
    if agent.as_os_str().as_encoded_bytes().iter().any(|b| matches!(b, b' ' | b':')) {
        bail!(
            "the agent library's path {} holds a space or a colon, which LD_PRELOAD cannot carry; \
             install stasis in another directory",
            agent.display()
        );
    }
    Ok(agent)
}
