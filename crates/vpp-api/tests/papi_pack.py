"""Packs VPP messages with vpp-papi (a real VPP client) for the Rust cross-check test.

stdin:  {"api_dir": DIR, "cases": [{"name": MSG, "args": {...}}, ...]}
        strings {"$hex": "..."} in args become bytes.
stdout: {"packed": [HEX, ...]}
Needs: pip install vpp-papi==2.4.2
"""
import glob
import json
import os
import sys

from vpp_papi.vpp_papi import VPPApiJSONFiles


def to_py(v):
    if isinstance(v, dict):
        if set(v) == {"$hex"}:
            return bytes.fromhex(v["$hex"])
        return {k: to_py(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_py(x) for x in v]
    return v


def main():
    req = json.load(sys.stdin)
    messages = {}
    files = sorted(glob.glob(os.path.join(req["api_dir"], "*.api.json")))
    for f in files:
        with open(f) as fh:
            m, _ = VPPApiJSONFiles.process_json_file(fh)
            messages.update(m)
    out = []
    for case in req["cases"]:
        msg = messages[case["name"]]
        out.append(bytes(msg.pack(to_py(case["args"]))).hex())
    json.dump({"packed": out}, sys.stdout)


main()
