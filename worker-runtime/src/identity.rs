//! Who this worker is and what placement it asked for: the Downward API.
//!
//! - env: `POD_NAME`, `POD_NAMESPACE`, `POD_IP`, `NODE_NAME` (`fieldRef`s);
//! - files (a `downwardAPI` volume, default `/etc/podinfo`): `labels` and `annotations`,
//!   one `key="value"` per line with Go-quoted values, as the kubelet writes them.
//!
//! Hints: label `phalanx.dev/role` (`prefill`, `decode`, `both`), label
//! `phalanx.dev/pd-group`, annotations `phalanx.dev/kv-domain` (a topology level),
//! `phalanx.dev/kv-domain-policy` (`required`, `preferred`), `phalanx.dev/kv-bytes-per-token`,
//! `phalanx.dev/typical-isl`, and `phalanx.dev/nic-alignment` (`required`, `preferred`:
//! the NICs must sit on the GPUs' PCIe roots).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

/// Why the identity or the hints could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A Downward API file line is not `key="value"`.
    #[error("{file} line {line}: {text:?} is not key=\"value\"")]
    Malformed {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// The line.
        text: String,
    },
    /// A hint has a value outside its set.
    #[error("{key}={value:?} is not valid: {expected}")]
    BadHint {
        /// The label or annotation.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
}

/// The worker's role in prefill/decode serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Computes the prompt's KV and hands it to a decode worker.
    Prefill,
    /// Receives KV and generates.
    Decode,
    /// Aggregated: does both.
    Both,
}

impl Role {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Prefill => "prefill",
            Role::Decode => "decode",
            Role::Both => "both",
        }
    }
}

/// How strictly a hint must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// A violation stops the worker with a termination message.
    Required,
    /// A violation is logged and counted.
    Preferred,
}

/// Topology levels a KV domain may name (as the scheduler's topology tree).
pub const LEVELS: [&str; 7] = ["nvlink", "numa", "node", "rack", "block", "zone", "host"];

/// The placement hints of this pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hints {
    /// `phalanx.dev/role` (default `both`).
    pub role: Role,
    /// `phalanx.dev/pd-group`.
    pub pd_group: Option<String>,
    /// `phalanx.dev/kv-domain`: the level prefill and decode of the group share.
    pub kv_domain: Option<String>,
    /// `phalanx.dev/kv-domain-policy` (default `preferred`).
    pub kv_domain_policy: Policy,
    /// `phalanx.dev/kv-bytes-per-token`.
    pub kv_bytes_per_token: Option<u64>,
    /// `phalanx.dev/typical-isl` (tokens).
    pub typical_isl: Option<u64>,
    /// `phalanx.dev/nic-alignment`: NICs on the GPUs' PCIe roots.
    pub nic_alignment: Option<Policy>,
}

/// The pod as the Downward API describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// `POD_NAME`.
    pub pod: String,
    /// `POD_NAMESPACE`.
    pub namespace: String,
    /// `POD_IP`.
    pub pod_ip: Option<String>,
    /// `NODE_NAME`.
    pub node: String,
    /// The pod's labels.
    pub labels: BTreeMap<String, String>,
    /// The pod's annotations.
    pub annotations: BTreeMap<String, String>,
}

impl Identity {
    /// Reads the env in `env` and the files under `podinfo` (missing files: no entries).
    pub fn read(env: &BTreeMap<String, String>, podinfo: &Path) -> Result<Identity, Error> {
        let get = |k: &str| env.get(k).cloned().unwrap_or_default();
        let file = |name: &str| -> Result<BTreeMap<String, String>, Error> {
            match std::fs::read_to_string(podinfo.join(name)) {
                Ok(text) => parse_downward_file(name, &text),
                Err(_) => Ok(BTreeMap::new()),
            }
        };
        Ok(Identity {
            pod: get("POD_NAME"),
            namespace: get("POD_NAMESPACE"),
            pod_ip: env.get("POD_IP").cloned().filter(|s| !s.is_empty()),
            node: env.get("NODE_NAME").or_else(|| env.get("PHALANX_NODE_NAME")).cloned().unwrap_or_default(),
            labels: file("labels")?,
            annotations: file("annotations")?,
        })
    }

    /// The placement hints, checked.
    pub fn hints(&self) -> Result<Hints, Error> {
        let role = match self.labels.get("phalanx.dev/role").map(String::as_str) {
            None | Some("both") => Role::Both,
            Some("prefill") => Role::Prefill,
            Some("decode") => Role::Decode,
            Some(other) => {
                return Err(Error::BadHint {
                    key: "phalanx.dev/role",
                    value: other.into(),
                    expected: "prefill, decode or both",
                });
            }
        };
        let policy = |key: &'static str, default: Option<Policy>| match self.annotations.get(key).map(String::as_str) {
            None => Ok(default),
            Some("required") => Ok(Some(Policy::Required)),
            Some("preferred") => Ok(Some(Policy::Preferred)),
            Some(other) => Err(Error::BadHint { key, value: other.into(), expected: "required or preferred" }),
        };
        let number = |key: &'static str| match self.annotations.get(key) {
            None => Ok(None),
            Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| Error::BadHint {
                key,
                value: v.clone(),
                expected: "a whole number",
            }),
        };
        let kv_domain = self.annotations.get("phalanx.dev/kv-domain").cloned();
        if let Some(level) = &kv_domain
            && !LEVELS.contains(&level.as_str())
        {
            return Err(Error::BadHint {
                key: "phalanx.dev/kv-domain",
                value: level.clone(),
                expected: "one of nvlink, numa, node, host, rack, block, zone",
            });
        }
        Ok(Hints {
            role,
            pd_group: self.labels.get("phalanx.dev/pd-group").cloned(),
            kv_domain,
            kv_domain_policy: policy("phalanx.dev/kv-domain-policy", Some(Policy::Preferred))?
                .unwrap_or(Policy::Preferred),
            kv_bytes_per_token: number("phalanx.dev/kv-bytes-per-token")?,
            typical_isl: number("phalanx.dev/typical-isl")?,
            nic_alignment: policy("phalanx.dev/nic-alignment", None)?,
        })
    }
}

/// Parses a Downward API `labels`/`annotations` file: `key="value"` per line, the value
/// quoted as Go's `strconv.Quote` does.
pub fn parse_downward_file(name: &str, text: &str) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = || Error::Malformed { file: name.into(), line: i + 1, text: line.into() };
        let (key, quoted) = line.split_once('=').ok_or_else(malformed)?;
        let value = unquote(quoted).ok_or_else(malformed)?;
        out.insert(key.to_owned(), value);
    }
    Ok(out)
}

/// Undoes Go's `strconv.Quote` for what it emits: `\"`, `\\`, `\n`, `\t`, `\r`, `\xNN`,
/// `\uNNNN`, `\UNNNNNNNN`.
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut bytes: Vec<u8> = Vec::new();
    let mut chars = inner.chars();
    let flush = |bytes: &mut Vec<u8>, out: &mut String| {
        if !bytes.is_empty() {
            out.push_str(&String::from_utf8_lossy(bytes));
            bytes.clear();
        }
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            flush(&mut bytes, &mut out);
            out.push(c);
            continue;
        }
        let hex = |chars: &mut std::str::Chars<'_>, n: usize| -> Option<u32> {
            let digits: String = chars.take(n).collect();
            (digits.len() == n).then(|| u32::from_str_radix(&digits, 16).ok()).flatten()
        };
        match chars.next()? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'x' => {
                bytes.push(hex(&mut chars, 2)? as u8);
                continue;
            }
            'u' => out.push(char::from_u32(hex(&mut chars, 4)?)?),
            'U' => out.push(char::from_u32(hex(&mut chars, 8)?)?),
            _ => return None,
        }
        flush(&mut bytes, &mut out);
    }
    flush(&mut bytes, &mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downward_files_parse_as_the_kubelet_writes_them() {
        let text = "app=\"demo\"\nphalanx.dev/role=\"prefill\"\nnote=\"a \\\"quoted\\\" line\\nnext\"\n";
        let m = parse_downward_file("labels", text).unwrap();
        assert_eq!(m["app"], "demo");
        assert_eq!(m["phalanx.dev/role"], "prefill");
        assert_eq!(m["note"], "a \"quoted\" line\nnext");
        let err = parse_downward_file("annotations", "ok=\"1\"\nbroken\n").unwrap_err();
        assert_eq!(err, Error::Malformed { file: "annotations".into(), line: 2, text: "broken".into() });
    }

    fn identity(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Identity {
        let map = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Identity { labels: map(labels), annotations: map(annotations), ..Default::default() }
    }

    #[test]
    fn hints_have_defaults_and_bad_values_are_named() {
        let h = identity(&[], &[]).hints().unwrap();
        assert_eq!((h.role, h.kv_domain_policy, h.nic_alignment), (Role::Both, Policy::Preferred, None));
        let h = identity(
            &[("phalanx.dev/role", "decode"), ("phalanx.dev/pd-group", "g1")],
            &[
                ("phalanx.dev/kv-domain", "nvlink"),
                ("phalanx.dev/kv-domain-policy", "required"),
                ("phalanx.dev/kv-bytes-per-token", "131072"),
                ("phalanx.dev/typical-isl", "8192"),
                ("phalanx.dev/nic-alignment", "required"),
            ],
        )
        .hints()
        .unwrap();
        assert_eq!(h.role, Role::Decode);
        assert_eq!(h.pd_group.as_deref(), Some("g1"));
        assert_eq!((h.kv_bytes_per_token, h.typical_isl), (Some(131072), Some(8192)));
        assert_eq!((h.kv_domain_policy, h.nic_alignment), (Policy::Required, Some(Policy::Required)));
        let err = identity(&[("phalanx.dev/role", "router")], &[]).hints().unwrap_err();
        assert!(err.to_string().contains("phalanx.dev/role=\"router\""), "{err}");
        let err = identity(&[], &[("phalanx.dev/kv-domain", "galaxy")]).hints().unwrap_err();
        assert!(err.to_string().contains("one of nvlink"), "{err}");
        let err = identity(&[], &[("phalanx.dev/kv-bytes-per-token", "lots")]).hints().unwrap_err();
        assert!(err.to_string().contains("a whole number"), "{err}");
    }
}
