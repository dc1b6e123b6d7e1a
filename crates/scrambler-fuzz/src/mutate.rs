//! The generated inputs: corpus entries mutated byte-wise or JSON-aware, and random bytes.

use crate::Shape;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::Union;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;

/// A generated input; shown as an escaped byte string when a case fails.
#[derive(Clone)]
pub(crate) struct Input(pub Vec<u8>);

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\" ({} bytes)", self.0.escape_ascii(), self.0.len())
    }
}

impl std::ops::Deref for Input {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// Integers at the edges of their types, and sizes parsers like to trust.
const BOUNDARY: &[u64] = &[
    0,
    1,
    2,
    16,
    0x7f,
    0x80,
    0x90,
    0xff,
    0x100,
    1500,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

/// One byte-level edit.
#[derive(Debug, Clone)]
enum ByteOp {
    Flip(Index, u8),
    Set(Index, u8),
    /// An aligned integer of width 1 << `.1` set to a boundary value, in either byte order.
    Boundary(Index, u8, Index, bool),
    Truncate(Index),
    Delete(Index, u8),
    Insert(Index, Vec<u8>),
    /// A dictionary token written over (or inserted at) a position.
    Token(Index, Index, bool),
    /// A slice of the input repeated.
    Repeat(Index, u8, u8),
    /// The tail of another corpus entry spliced in.
    Splice(Index, Index, Index),
}

fn byte_op(shape: Shape) -> BoxedStrategy<ByteOp> {
    let mut arms: Vec<(u32, BoxedStrategy<ByteOp>)> = vec![
        (
            3,
            (any::<Index>(), 0u8..8)
                .prop_map(|(i, b)| ByteOp::Flip(i, b))
                .boxed(),
        ),
        (
            2,
            (any::<Index>(), any::<u8>())
                .prop_map(|(i, v)| ByteOp::Set(i, v))
                .boxed(),
        ),
        (
            3,
            (any::<Index>(), 0u8..4, any::<Index>(), any::<bool>())
                .prop_map(|(i, w, v, be)| ByteOp::Boundary(i, w, v, be))
                .boxed(),
        ),
        (
            2,
            (any::<Index>(), any::<Index>(), Just(false))
                .prop_map(|(i, t, ins)| ByteOp::Token(i, t, ins))
                .boxed(),
        ),
        (1, any::<Index>().prop_map(ByteOp::Truncate).boxed()),
    ];
    if shape != Shape::Layout {
        arms.extend([
            (
                1,
                (any::<Index>(), 1u8..32)
                    .prop_map(|(i, n)| ByteOp::Delete(i, n))
                    .boxed(),
            ),
            (
                1,
                (any::<Index>(), vec(any::<u8>(), 1..16))
                    .prop_map(|(i, b)| ByteOp::Insert(i, b))
                    .boxed(),
            ),
            (
                1,
                (any::<Index>(), any::<Index>(), Just(true))
                    .prop_map(|(i, t, ins)| ByteOp::Token(i, t, ins))
                    .boxed(),
            ),
            (
                1,
                (any::<Index>(), 1u8..64, 1u8..8)
                    .prop_map(|(i, n, k)| ByteOp::Repeat(i, n, k))
                    .boxed(),
            ),
            (
                1,
                (any::<Index>(), any::<Index>(), any::<Index>())
                    .prop_map(|(s, at, from)| ByteOp::Splice(s, at, from))
                    .boxed(),
            ),
        ]);
    }
    Union::new_weighted(arms).boxed()
}

fn apply_byte(op: &ByteOp, b: &mut Vec<u8>, seeds: &[Vec<u8>], dict: &[Vec<u8>]) {
    let len = b.len();
    let at = |i: &Index| if len == 0 { 0 } else { i.index(len) };
    match op {
        ByteOp::Flip(i, bit) if len > 0 => b[at(i)] ^= 1 << bit,
        ByteOp::Set(i, v) if len > 0 => b[at(i)] = *v,
        ByteOp::Boundary(i, w, v, be) => {
            let width = 1usize << w;
            if len < width {
                return;
            }
            let pos = at(i).min(len - width) & !(width - 1);
            let value = BOUNDARY[v.index(BOUNDARY.len())];
            let bytes = if *be {
                value.to_be_bytes()[8 - width..].to_vec()
            } else {
                value.to_le_bytes()[..width].to_vec()
            };
            b[pos..pos + width].copy_from_slice(&bytes);
        }
        ByteOp::Truncate(i) => b.truncate(at(i)),
        ByteOp::Delete(i, n) if len > 0 => {
            let p = at(i);
            b.drain(p..(p + *n as usize).min(len));
        }
        ByteOp::Insert(i, bytes) => {
            let p = at(i);
            b.splice(p..p, bytes.iter().copied());
        }
        ByteOp::Token(i, t, insert) if !dict.is_empty() => {
            let tok = &dict[t.index(dict.len())];
            let p = at(i);
            if *insert {
                b.splice(p..p, tok.iter().copied());
            } else {
                // aligned like the field it most likely replaces
                let p = p & !(tok.len().next_power_of_two().min(8) - 1);
                let end = (p + tok.len()).min(len);
                b.splice(p..end, tok.iter().copied());
            }
        }
        ByteOp::Repeat(i, n, k) if len > 0 => {
            let p = at(i);
            let piece: Vec<u8> = b[p..(p + *n as usize).min(len)].to_vec();
            for _ in 0..*k {
                b.splice(p..p, piece.iter().copied());
            }
        }
        ByteOp::Splice(s, at_i, from) => {
            let other = &seeds[s.index(seeds.len())];
            let p = at(at_i);
            let f = if other.is_empty() {
                0
            } else {
                from.index(other.len())
            };
            b.truncate(p);
            b.extend_from_slice(&other[f..]);
        }
        _ => {}
    }
}

/// One edit of a JSON document; nodes are picked among every node of the document.
#[derive(Debug, Clone)]
enum JsonOp {
    /// A node replaced by a boundary value or a dictionary string.
    Replace(Index, Index),
    /// A node replaced by a copy of another node (a value swap across fields).
    Copy(Index, Index),
    Remove(Index),
    /// An object member renamed to a dictionary token.
    Rename(Index, Index),
    /// An array element appended again.
    Duplicate(Index),
    /// A node wrapped in an array.
    Wrap(Index),
}

fn json_op() -> impl Strategy<Value = JsonOp> {
    prop_oneof![
        4 => (any::<Index>(), any::<Index>()).prop_map(|(n, v)| JsonOp::Replace(n, v)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| JsonOp::Copy(a, b)),
        2 => any::<Index>().prop_map(JsonOp::Remove),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(n, t)| JsonOp::Rename(n, t)),
        1 => any::<Index>().prop_map(JsonOp::Duplicate),
        1 => any::<Index>().prop_map(JsonOp::Wrap),
    ]
}

/// Values at the edges of what JSON fields of confs and files hold.
fn boundary_values() -> Vec<Value> {
    serde_json::json!([
        null,
        true,
        false,
        0,
        -1,
        1,
        65535,
        65536,
        4294967295u64,
        4294967296u64,
        18446744073709551615u64,
        -9223372036854775808i64,
        1e308,
        0.5,
        "",
        " ",
        "../../x",
        "a/b",
        "0",
        "-1",
        "10.1.0.0/16",
        "10.1.0.1",
        "10.1.0.0/33",
        "0.0.0.0/0",
        "255.255.255.255",
        "255.255.255.254/31",
        "::",
        "::/0",
        "fd00::/127",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "0.4.0",
        "1.0.0",
        "1.1.0",
        "0.3.1",
        "\u{0}",
        "\u{ff}\u{fe}",
        [],
        {},
        [[]],
        [{}]
    ])
    .as_array()
    .cloned()
    .unwrap_or_default()
}

/// JSON pointers of every node of `v` (the root is "").
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let key = k.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{key}"), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn parent_and_key(p: &str) -> Option<(&str, String)> {
    let (parent, key) = p.rsplit_once('/')?;
    Some((parent, key.replace("~1", "/").replace("~0", "~")))
}

fn apply_json(op: &JsonOp, doc: &mut Value, values: &[Value]) {
    let mut ptrs = Vec::new();
    pointers(doc, String::new(), &mut ptrs);
    let node = |i: &Index| ptrs[i.index(ptrs.len())].clone();
    match op {
        JsonOp::Replace(n, v) => {
            if let Some(slot) = doc.pointer_mut(&node(n)) {
                *slot = values[v.index(values.len())].clone();
            }
        }
        JsonOp::Copy(a, b) => {
            let src = doc.pointer(&node(b)).cloned();
            if let (Some(slot), Some(src)) = (doc.pointer_mut(&node(a)), src) {
                *slot = src;
            }
        }
        JsonOp::Remove(n) => {
            let p = node(n);
            let Some((parent, key)) = parent_and_key(&p) else {
                return;
            };
            match doc.pointer_mut(parent) {
                Some(Value::Object(m)) => {
                    m.remove(&key);
                }
                Some(Value::Array(a)) => {
                    if let Ok(i) = key.parse::<usize>() {
                        if i < a.len() {
                            a.remove(i);
                        }
                    }
                }
                _ => {}
            }
        }
        JsonOp::Rename(n, t) => {
            let p = node(n);
            let Some((parent, key)) = parent_and_key(&p) else {
                return;
            };
            let names: Vec<&Value> = values.iter().filter(|v| v.is_string()).collect();
            let new = names[t.index(names.len())]
                .as_str()
                .unwrap_or("x")
                .to_string();
            if let Some(Value::Object(m)) = doc.pointer_mut(parent) {
                if let Some(v) = m.remove(&key) {
                    m.insert(new, v);
                }
            }
        }
        JsonOp::Duplicate(n) => {
            if let Some(Value::Array(a)) = doc.pointer_mut(&node(n)) {
                if let Some(first) = a.first().cloned() {
                    a.push(first);
                }
            }
        }
        JsonOp::Wrap(n) => {
            if let Some(slot) = doc.pointer_mut(&node(n)) {
                *slot = Value::Array(vec![slot.take()]);
            }
        }
    }
}

/// The generated inputs of a target with these corpus entries and dictionary.
pub(crate) fn inputs(
    seeds: Vec<Vec<u8>>,
    dict: Vec<Vec<u8>>,
    shape: Shape,
) -> BoxedStrategy<Input> {
    let seeds = Arc::new(seeds);
    let dict = Arc::new(dict);
    let (s1, d1) = (seeds.clone(), dict.clone());
    let bytes = (any::<Index>(), vec(byte_op(shape), 1..8))
        .prop_map(move |(s, ops)| {
            let mut b = s1[s.index(s1.len())].clone();
            for op in &ops {
                apply_byte(op, &mut b, &s1, &d1);
            }
            Input(b)
        })
        .boxed();
    let random = vec(any::<u8>(), 0..512).prop_map(Input).boxed();
    let mut arms = vec![(5, bytes), (1, random)];
    if shape == Shape::Json {
        let mut values = boundary_values();
        values.extend(
            dict.iter()
                .map(|t| Value::String(String::from_utf8_lossy(t).into_owned())),
        );
        let values = Arc::new(values);
        let (s2, d2) = (seeds.clone(), dict.clone());
        let json = (
            any::<Index>(),
            vec(json_op(), 1..4),
            proptest::option::weighted(0.2, byte_op(shape)),
        )
            .prop_map(move |(s, ops, byte_op)| {
                let seed = &s2[s.index(s2.len())];
                let mut b = match serde_json::from_slice::<Value>(seed) {
                    Ok(mut doc) => {
                        for op in &ops {
                            apply_json(op, &mut doc, &values);
                        }
                        serde_json::to_vec(&doc).unwrap_or_default()
                    }
                    Err(_) => seed.clone(),
                };
                if let Some(op) = &byte_op {
                    apply_byte(op, &mut b, &s2, &d2);
                }
                Input(b)
            })
            .boxed();
        arms.push((8, json));
    }
    Union::new_weighted(arms).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    #[test]
    fn mutations_change_inputs_and_keep_json_mostly_json() {
        let seed = br#"{"a":[1,2,{"b":"c"}],"d":"e"}"#.to_vec();
        let s = inputs(vec![seed.clone()], vec![b"subnet".to_vec()], Shape::Json);
        let mut runner = TestRunner::deterministic();
        let (mut changed, mut json) = (0, 0);
        for _ in 0..500 {
            let v = s.new_tree(&mut runner).unwrap().current();
            changed += usize::from(v.0 != seed);
            json += usize::from(serde_json::from_slice::<Value>(&v).is_ok());
        }
        assert!(
            changed > 400,
            "{changed} of 500 inputs differ from the seed"
        );
        assert!(json > 150, "{json} of 500 inputs are JSON");
        assert!(json < 500, "every input is JSON: byte mutations never ran");
    }

    #[test]
    fn byte_ops_handle_short_and_empty_inputs() {
        let mut runner = TestRunner::deterministic();
        let ops = vec(byte_op(Shape::Bytes), 1..8);
        let seeds = vec![Vec::new(), vec![1, 2, 3]];
        for start in [0usize, 1, 5, 9] {
            for _ in 0..300 {
                let mut b = vec![7u8; start];
                for op in ops.new_tree(&mut runner).unwrap().current() {
                    apply_byte(&op, &mut b, &seeds, &[b"tok".to_vec(), Vec::new()]);
                }
            }
        }
    }
}
