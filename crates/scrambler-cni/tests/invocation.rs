//! The `scrambler-cni` binary as a person or a careless environment runs it: `--help`,
//! no `CNI_COMMAND`, variables that are not UTF-8, a conf larger than 1 MiB.

scrambler_testkit::plugin_binary_tests!(
    env!("CARGO_BIN_EXE_scrambler-cni"),
    "scrambler-cni",
    |data| serde_json::json!({
        "cniVersion": "1.0.0", "name": "utf", "type": "scrambler-cni", "backend": "xfrm",
        "ipam": {"type": "scrambler-ipam", "subnet": "10.61.0.0/24",
                 "dataDir": data.display().to_string()},
        "logFile": data.join("cni.log").display().to_string()
    })
);
