//! The `CNI_*` environment variables of one invocation, parsed and validated with the
//! spec's checks ([`CniEnv::from_vars`]). The implementation is shared with every
//! Scrambler plugin in [`scrambler_core::cni`]; this module re-exports it.
//!
//! Parsing takes the variables as a list of pairs instead of reading the process
//! environment, so the same code serves the binary, tests and an embedding runtime.

pub use scrambler_core::cni::{
    parse_cni_args as parse_args, validate_container_id, validate_ifname, CniEnv, Command,
};

#[cfg(test)]
mod tests {
    use super::*;
    use scrambler_core::Netns;

    fn base(cmd: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", "c0ffee".to_string()),
            ("CNI_NETNS", "/run/netns/x".to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/usr/lib/cni:/opt/cni/bin".to_string()),
            ("CNI_ARGS", "IgnoreUnknown=1;IP=10.0.0.5".to_string()),
        ]
    }

    #[test]
    fn parses_a_full_add() {
        let e = CniEnv::from_vars(base("ADD")).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.path.len(), 2);
        assert_eq!(e.arg("IP"), Some("10.0.0.5"));
        assert_eq!(e.pod_netns(), Some(Netns::path("/run/netns/x")));
    }

    #[test]
    fn rejects_bad_environment_with_code_4() {
        let mut v = base("ADD");
        v[3].1 = "a-very-long-ifname".into();
        assert_eq!(CniEnv::from_vars(v).unwrap_err().code(), 4);
        let mut v = base("ADD");
        v[1].1 = "-bad".into();
        assert_eq!(CniEnv::from_vars(v).unwrap_err().code(), 4);
        let mut v = base("ADD");
        v.remove(2);
        assert_eq!(CniEnv::from_vars(v).unwrap_err().code(), 4);
        assert_eq!(CniEnv::from_vars(base("FROB")).unwrap_err().code(), 4);
        let mut v = base("ADD");
        v[5].1 = "novalue".into();
        assert_eq!(CniEnv::from_vars(v).unwrap_err().code(), 4);
        assert!(validate_ifname("eth0:1").is_err());
        assert!(validate_ifname("..").is_err());
    }

    #[test]
    fn del_and_global_commands_need_less() {
        let mut v = base("DEL");
        v.remove(2);
        assert!(CniEnv::from_vars(v).unwrap().netns.is_none());
        let e = CniEnv::from_vars([("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")]).unwrap();
        assert_eq!(e.command, Command::Gc);
        let e = CniEnv::from_vars([("CNI_COMMAND", "VERSION")]).unwrap();
        assert_eq!(e.command, Command::Version);
    }
}
