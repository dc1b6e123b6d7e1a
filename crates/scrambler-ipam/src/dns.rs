//! `resolvConf`: the DNS settings of a resolv.conf file, as host-local returns them.

use scrambler_core::{Dns, Error, Result};
use std::path::Path;

/// Reads `path` and returns its `nameserver`, `domain`, `search` and `options` lines.
pub fn read_resolv_conf(path: &Path) -> Result<Dns> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io("read resolvConf", path.display(), e))?;
    Ok(parse_resolv_conf(&text))
}

/// Parses resolv.conf text; comments (`#`, `;`) and unknown keywords are ignored.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(key) = words.next() else { continue };
        let rest = words.map(str::to_string);
        match key {
            "nameserver" => dns.nameservers.extend(rest.take(1)),
            "domain" => dns.domain = rest.take(1).next(),
            "search" => dns.search = rest.collect(),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_lines() {
        let d = parse_resolv_conf(
            "# generated\nnameserver 192.0.2.53\nnameserver fd00::53 # v6\n\
             domain example.test\nsearch a.test b.test\noptions ndots:5 edns0\nsortlist x\n",
        );
        assert_eq!(d.nameservers, ["192.0.2.53", "fd00::53"]);
        assert_eq!(d.domain.as_deref(), Some("example.test"));
        assert_eq!(d.search, ["a.test", "b.test"]);
        assert_eq!(d.options, ["ndots:5", "edns0"]);
        assert!(read_resolv_conf(Path::new("/nonexistent/resolv.conf")).is_err());
    }
}
