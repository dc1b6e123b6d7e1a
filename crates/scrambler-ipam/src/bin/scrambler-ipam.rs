//! `scrambler-ipam`: a CNI IPAM plugin, a drop-in for host-local (see the crate docs).

fn main() -> std::process::ExitCode {
    scrambler_ipam::plugin::main()
}
