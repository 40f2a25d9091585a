//! `stasis`, and whatever DMTCP name a link to it is called by.

fn main() {
    stasis_cli::main_as(None)
}
