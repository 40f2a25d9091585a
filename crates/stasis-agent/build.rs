//! Links the agent with every symbol bound at load (`-z now`): with lazy
//! binding, each fork child would look up again, on its own copy of the
//! tables, every libc function it is the first to call (the fork handlers'
//! own), a few page faults and microseconds per fork.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,now");
}
