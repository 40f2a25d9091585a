//! `dmtcp_command`: stasis with DMTCP's command line (docs/dmtcp-compatibility.md).

fn main() {
    stasis_cli::main_as(Some(stasis_cli::DmtcpName::Command))
}
