//! `dmtcp_nocheckpoint`: runs a program outside the computation, from inside it
//! (docs/dmtcp-compatibility.md).

fn main() {
    stasis_cli::nocheckpoint_main()
}
