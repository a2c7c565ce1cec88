//! Reads a YAML job file into a [`serde_json::Value`] while remembering where every key
//! and value stands in the text, so that later errors can name a line and a column.
//!
//! yaml-rust2's event parser does the lexing; this module builds the value from its
//! events. Plain scalars resolve like the YAML 1.2 core schema (null, bool, int, float,
//! else string), quoted and block scalars are strings, duplicate keys are reported, and
//! aliases copy the anchored value.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, ScanError, TScalarStyle};

use super::{At, Problem};

/// Deepest nesting accepted, to keep recursion bounded on hostile input.
const MAX_DEPTH: usize = 200;

/// How many nodes aliases may expand to in one document: a job file is small, and this
/// stops "billion laughs" alias bombs from exhausting memory.
const MAX_ALIAS_NODES: usize = 100_000;

/// How many nodes a document may hold in memory in all: parsed, expanded from aliases,
/// and copied for anchors (nested anchors copy their subtrees once per level). Real job
/// files have hundreds; this bounds the memory and time of any file to tens of MB and
/// well under a second.
pub const MAX_NODES: usize = 200_000;

/// Nodes in `v`, counting stops once past `limit`.
fn count_nodes(v: &Value, limit: usize) -> usize {
    let mut n = 1;
    let children: Box<dyn Iterator<Item = &Value>> = match v {
        Value::Array(a) => Box::new(a.iter()),
        Value::Object(o) => Box::new(o.values()),
        _ => return 1,
    };
    for c in children {
        if n > limit {
            break;
        }
        n += count_nodes(c, limit - n);
    }
    n
}

/// A position in the job file, 1-based like editors show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column (in characters), from 1.
    pub column: usize,
}

impl Pos {
    /// The start of the file.
    pub const START: Pos = Pos { line: 1, column: 1 };

    fn from_marker(m: &Marker) -> Pos {
        Pos {
            line: m.line().max(1),
            column: m.col() + 1,
        }
    }
}

/// Where a node stands: its key (for mapping values) and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Position of the key, for values of a mapping.
    pub key: Option<Pos>,
    /// Position of the value.
    pub value: Pos,
}

/// Positions of every node, by JSON pointer.
#[derive(Debug, Default, Clone)]
pub struct Spans {
    map: HashMap<String, Span>,
}

impl Spans {
    /// The span of exactly `pointer`.
    #[cfg(test)]
    pub fn get(&self, pointer: &str) -> Option<&Span> {
        self.map.get(pointer)
    }

    /// The span of `pointer` or of its nearest ancestor that has one, with the pointer
    /// that was found.
    pub fn nearest<'p>(&self, pointer: &'p str) -> (&'p str, Span) {
        let mut p = pointer;
        loop {
            if let Some(s) = self.map.get(p) {
                return (p, *s);
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => {
                    return (
                        "",
                        Span {
                            key: None,
                            value: Pos::START,
                        },
                    )
                }
            }
        }
    }

    /// Where to point for an error about `pointer` in `value`: a key or a value,
    /// following `at`.
    pub fn locate(&self, value: &Value, pointer: &str, at: At) -> Pos {
        let (found, span) = self.nearest(pointer);
        let exact = found == pointer;
        let is_container = value
            .pointer(found)
            .is_some_and(|v| v.is_object() || v.is_array());
        let want_key = match at {
            At::Key if exact => true,
            At::Value if exact => false,
            _ => is_container,
        };
        if want_key {
            span.key.unwrap_or(span.value)
        } else {
            span.value
        }
    }
}

/// A parsed YAML document.
#[derive(Debug)]
pub struct Document {
    /// The document as JSON.
    pub value: Value,
    /// Where each node stands.
    pub spans: Spans,
    /// Non-fatal problems (duplicate keys); the first of duplicate keys is kept.
    pub problems: Vec<Problem>,
}

/// Escapes one JSON-pointer segment.
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Undoes [`escape`].
pub fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// Parses `text` as one YAML document. A syntax error is returned as the only problem,
/// with its position.
pub fn parse(text: &str) -> Result<Document, Problem> {
    let mut reader = Reader {
        parser: Parser::new_from_str(text),
        spans: HashMap::new(),
        anchors: HashMap::new(),
        alias_nodes: 0,
        nodes: 0,
        problems: Vec::new(),
    };
    let value = reader.document()?;
    Ok(Document {
        value,
        spans: Spans { map: reader.spans },
        problems: reader.problems,
    })
}

struct Reader<'a> {
    parser: Parser<std::str::Chars<'a>>,
    spans: HashMap<String, Span>,
    anchors: HashMap<usize, Value>,
    /// Nodes materialised by aliases so far (bounded by [`MAX_ALIAS_NODES`]).
    alias_nodes: usize,
    /// Nodes held so far, however made (bounded by [`MAX_NODES`]).
    nodes: usize,
    problems: Vec<Problem>,
}

fn syntax_error(e: &ScanError) -> Problem {
    Problem {
        pointer: String::new(),
        at: At::Exact(Pos::from_marker(e.marker())),
        message: format!("YAML syntax error: {}", e.info()),
    }
}

fn problem_at(mark: &Marker, message: impl Into<String>) -> Problem {
    Problem {
        pointer: String::new(),
        at: At::Exact(Pos::from_marker(mark)),
        message: message.into(),
    }
}

impl Reader<'_> {
    /// Counts `n` more nodes held in memory; an error past [`MAX_NODES`].
    fn charge(&mut self, n: usize, mark: &Marker) -> Result<(), Problem> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(problem_at(
                mark,
                format!(
                    "the job file holds more than {MAX_NODES} values (aliases and anchors \
                     expanded); job files are small: is this the right file?"
                ),
            ));
        }
        Ok(())
    }

    fn next(&mut self) -> Result<(Event, Marker), Problem> {
        self.parser.next_token().map_err(|e| syntax_error(&e))
    }

    fn document(&mut self) -> Result<Value, Problem> {
        let (ev, mark) = self.next()?;
        if ev != Event::StreamStart {
            return Err(problem_at(
                &mark,
                "YAML syntax error: expected the start of the file",
            ));
        }
        let (ev, mark) = self.next()?;
        match ev {
            Event::StreamEnd => return Ok(Value::Null),
            Event::DocumentStart => {}
            _ => return Err(problem_at(&mark, "YAML syntax error: expected a document")),
        }
        let (ev, mark) = self.next()?;
        let value = self.node(ev, mark, String::new(), None, true, 0)?;
        let (ev, mark) = self.next()?;
        if ev != Event::DocumentEnd {
            return Err(problem_at(
                &mark,
                "YAML syntax error: expected the end of the document",
            ));
        }
        let (ev, mark) = self.next()?;
        match ev {
            Event::StreamEnd => Ok(value),
            _ => Err(problem_at(
                &mark,
                "a job file holds a single YAML document (found a second one)",
            )),
        }
    }

    /// Builds the node that starts with `ev`; records spans under `pointer` when
    /// `record` (not for the ignored value of a duplicate key).
    fn node(
        &mut self,
        ev: Event,
        mark: Marker,
        pointer: String,
        key: Option<Pos>,
        record: bool,
        depth: usize,
    ) -> Result<Value, Problem> {
        if depth > MAX_DEPTH {
            return Err(problem_at(&mark, "the document is nested too deeply"));
        }
        self.charge(1, &mark)?;
        if record {
            self.spans.insert(
                pointer.clone(),
                Span {
                    key,
                    value: Pos::from_marker(&mark),
                },
            );
        }
        let (value, anchor) = match ev {
            Event::Scalar(text, style, anchor, tag) => {
                match resolve_scalar(text, style, tag.as_ref()) {
                    Ok(v) => (v, anchor),
                    Err(message) => {
                        // Kept as the text it was, reported where it stands.
                        if record {
                            self.problems.push(Problem {
                                pointer: pointer.clone(),
                                at: At::Exact(Pos::from_marker(&mark)),
                                message,
                            });
                        }
                        (Value::Null, anchor)
                    }
                }
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(v) => {
                    let left = MAX_ALIAS_NODES.saturating_sub(self.alias_nodes);
                    self.alias_nodes += count_nodes(v, left);
                    if self.alias_nodes > MAX_ALIAS_NODES {
                        return Err(problem_at(
                            &mark,
                            format!("aliases expand to more than {MAX_ALIAS_NODES} nodes"),
                        ));
                    }
                    let v = v.clone();
                    self.charge(count_nodes(&v, MAX_NODES), &mark)?;
                    (v, 0)
                }
                None => return Err(problem_at(&mark, "unknown alias")),
            },
            Event::SequenceStart(anchor, _) => (self.sequence(&pointer, record, depth)?, anchor),
            Event::MappingStart(anchor, _) => (self.mapping(&pointer, record, depth)?, anchor),
            other => {
                return Err(problem_at(
                    &mark,
                    format!("YAML syntax error: unexpected {other:?}"),
                ))
            }
        };
        if anchor > 0 {
            // The copy kept for aliases counts too: nested anchors copy their subtrees
            // once per level.
            self.charge(count_nodes(&value, MAX_NODES), &mark)?;
            self.anchors.insert(anchor, value.clone());
        }
        Ok(value)
    }

    /// The parser marks a block mapping where it recognises it (at the first `:`):
    /// start the collection at its first child instead when that comes earlier.
    fn start_at_first_child(&mut self, pointer: &str, first: Pos, record: bool) {
        if !record {
            return;
        }
        if let Some(span) = self.spans.get_mut(pointer) {
            span.value = span.value.min(first);
        }
    }

    fn sequence(&mut self, pointer: &str, record: bool, depth: usize) -> Result<Value, Problem> {
        let mut items = Vec::new();
        loop {
            let (ev, mark) = self.next()?;
            if ev == Event::SequenceEnd {
                return Ok(Value::Array(items));
            }
            if items.is_empty() {
                self.start_at_first_child(pointer, Pos::from_marker(&mark), record);
            }
            let child = format!("{pointer}/{}", items.len());
            items.push(self.node(ev, mark, child, None, record, depth + 1)?);
        }
    }

    fn mapping(&mut self, pointer: &str, record: bool, depth: usize) -> Result<Value, Problem> {
        let mut map = Map::new();
        let mut key_positions: HashMap<String, Pos> = HashMap::new();
        loop {
            let (ev, mark) = self.next()?;
            let key = match ev {
                Event::MappingEnd => return Ok(Value::Object(map)),
                Event::Scalar(text, ..) => text,
                _ => {
                    return Err(problem_at(
                        &mark,
                        "mapping keys must be plain names, not lists or mappings",
                    ))
                }
            };
            let key_pos = Pos::from_marker(&mark);
            if map.is_empty() && key_positions.is_empty() {
                self.start_at_first_child(pointer, key_pos, record);
            }
            let child = format!("{pointer}/{}", escape(&key));
            let (ev, vmark) = self.next()?;
            if let Some(first) = key_positions.get(&key) {
                if record {
                    self.problems.push(Problem {
                        pointer: child.clone(),
                        at: At::Exact(key_pos),
                        message: format!(
                            "duplicate key `{key}` (first defined at line {}, column {})",
                            first.line, first.column
                        ),
                    });
                }
                self.node(ev, vmark, child, Some(key_pos), false, depth + 1)?;
                continue;
            }
            let value = self.node(ev, vmark, child, Some(key_pos), record, depth + 1)?;
            key_positions.insert(key.clone(), key_pos);
            map.insert(key, value);
        }
    }
}

/// Resolves a scalar: plain scalars like the YAML 1.2 core schema, anything quoted,
/// literal, folded or tagged `!!str` as a string. A number that cannot be held exactly
/// is an error, not a silent approximation.
fn resolve_scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    let forced_string = tag.is_some_and(|t| t.handle == "tag:yaml.org,2002:" && t.suffix == "str");
    if style != TScalarStyle::Plain || forced_string {
        return Ok(Value::String(text));
    }
    Ok(resolve_plain(&text)?.unwrap_or(Value::String(text)))
}

/// The integer a float's text denotes exactly (`64.0`, `1e3`, `2.50e1`), if it denotes
/// one within `i64` (`2.5` and `1e30` do not). Worked out from the digits, so that no
/// rounding of the text to `f64` can pass for an integer.
fn exact_integer(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], body[i + 1..].parse::<i32>().ok()?),
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let mut exp = exponent.checked_sub(i32::try_from(frac.len()).ok()?)?;
    // Trailing zeros of the digits move into the exponent.
    let trimmed = digits.trim_end_matches('0');
    exp = exp.checked_add(i32::try_from(digits.len() - trimmed.len()).ok()?)?;
    if trimmed.is_empty() {
        return Some(0);
    }
    if exp < 0 || trimmed.len() > 19 {
        return None;
    }
    let mut v: i128 = trimmed.parse().ok()?;
    for _ in 0..exp {
        v = v.checked_mul(10)?;
        if v > i128::from(i64::MAX) + 1 {
            return None;
        }
    }
    i64::try_from(if neg { -v } else { v }).ok()
}

/// The core-schema value of a plain scalar, `None` for a string. Numbers mean what they
/// say: a float with no fraction (`64.0`, `1e3`) is that integer, so that
/// `parallelism: 64.0` is 64; an integer beyond 64 bits and a float beyond `f64` are
/// errors.
fn resolve_plain(s: &str) -> Result<Option<Value>, String> {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Some(Value::Null)),
        "true" | "True" | "TRUE" => return Ok(Some(Value::Bool(true))),
        "false" | "False" | "FALSE" => return Ok(Some(Value::Bool(false))),
        _ => {}
    }
    if let Some(v) = resolve_int(s)? {
        return Ok(Some(v));
    }
    if is_float(s) {
        let f = s
            .parse::<f64>()
            .map_err(|e| format!("`{s}` is not a number: {e}"))?;
        if !f.is_finite() {
            return Err(format!("the number `{s}` is out of range"));
        }
        if let Some(i) = exact_integer(s) {
            return Ok(Some(Value::from(i)));
        }
        return Ok(Number::from_f64(f).map(Value::Number));
    }
    Ok(None)
}

fn all_digits(s: &str, radix: u32) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_digit(radix))
}

/// An integer scalar (decimal, `0x` hex, `0o` octal); `None` if `s` is not one, an
/// error if it is one that does not fit 64 bits.
fn resolve_int(s: &str) -> Result<Option<Value>, String> {
    let too_large = || format!("the integer `{s}` is out of range (at most {})", u64::MAX);
    let radix_int = |digits: &str, radix: u32| {
        if all_digits(digits, radix) {
            u64::from_str_radix(digits, radix)
                .map(|v| Some(Value::from(v)))
                .map_err(|_| too_large())
        } else {
            Ok(None)
        }
    };
    if let Some(hex) = s.strip_prefix("0x") {
        return radix_int(hex, 16);
    }
    if let Some(oct) = s.strip_prefix("0o") {
        return radix_int(oct, 8);
    }
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !all_digits(unsigned, 10) {
        return Ok(None);
    }
    if let Ok(i) = s.parse::<i64>() {
        return Ok(Some(Value::from(i)));
    }
    if let Ok(u) = s.trim_start_matches('+').parse::<u64>() {
        return Ok(Some(Value::from(u)));
    }
    Err(too_large())
}

/// `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn is_float(s: &str) -> bool {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => all_digits(frac, 10),
        Some((int, frac)) => all_digits(int, 10) && (frac.is_empty() || all_digits(frac, 10)),
        None => all_digits(mantissa, 10),
    };
    let exponent_ok =
        exponent.is_none_or(|e| all_digits(e.strip_prefix(['-', '+']).unwrap_or(e), 10));
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(text: &str) -> Document {
        match parse(text) {
            Ok(d) => d,
            Err(p) => panic!("parse failed: {p:?}"),
        }
    }

    #[test]
    fn alias_bombs_are_refused_not_expanded() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = (b'a' + i - 1) as char;
            let cur = (b'a' + i) as char;
            text.push_str(&format!(
                "{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        match parse(&text) {
            Ok(_) => panic!("a 10^9-node alias bomb must be refused"),
            Err(p) => assert!(format!("{p:?}").contains("aliases expand"), "{p:?}"),
        }
        // Ordinary aliases still work.
        let d = doc("base: &b { x: 1 }\nother: *b\n");
        assert_eq!(d.value, json!({"base": {"x": 1}, "other": {"x": 1}}));
    }

    #[test]
    fn scalars_resolve_like_yaml_core() {
        let d = doc(concat!(
            "a: 1\nb: -2\nc: 1.5\nd: true\ne: ~\nf: '1'\ng: \"true\"\nh: 10s\n",
            "i: 0x1f\nj: .5\nk: 1e3\nl:\nm: !!str 12\nn: False\n"
        ));
        assert_eq!(
            d.value,
            json!({"a": 1, "b": -2, "c": 1.5, "d": true, "e": null, "f": "1", "g": "true",
                   "h": "10s", "i": 31, "j": 0.5, "k": 1000, "l": null, "m": "12", "n": false})
        );
    }

    #[test]
    fn numbers_mean_what_they_say() {
        let d = doc(concat!(
            "a: 64.0\nb: 1e3\nc: -2.0e2\nd: 2.5\ne: 9007199254740993.0\n",
            "f: 9007199254740991.5\ng: 1e18\nh: 0.0\ni: 12.50e1\nj: 1e19\nk: 1.5e-3\n"
        ));
        assert_eq!(d.value["a"], json!(64));
        assert!(d.value["a"].is_u64(), "64.0 is the integer 64");
        assert_eq!(d.value["b"], json!(1000));
        assert_eq!(d.value["c"], json!(-200));
        assert_eq!(d.value["d"], json!(2.5));
        // Exact from the digits, whatever f64 would round them to.
        assert_eq!(d.value["e"], json!(9007199254740993i64));
        assert!(d.value["f"].is_f64(), "not an integer: {}", d.value["f"]);
        assert_eq!(d.value["g"], json!(1_000_000_000_000_000_000i64));
        assert_eq!(d.value["h"], json!(0));
        assert_eq!(d.value["i"], json!(125));
        assert!(d.value["j"].is_f64(), "beyond i64: a float");
        assert_eq!(d.value["k"], json!(0.0015));
        for (text, why) in [
            ("x: 99999999999999999999\n", "out of range"),
            ("x: -99999999999999999999\n", "out of range"),
            ("x: 0xffffffffffffffffff\n", "out of range"),
            ("x: 1e400\n", "out of range"),
            ("x: -1e400\n", "out of range"),
        ] {
            let d = doc(text);
            assert_eq!(d.problems.len(), 1, "{text}");
            assert!(
                d.problems[0].message.contains(why),
                "{text}: {:?}",
                d.problems
            );
            assert_eq!(d.problems[0].pointer, "/x");
        }
    }

    #[test]
    fn anchors_copied_level_by_level_are_bounded() {
        // Every level anchors the list holding the next: each anchor keeps a copy of
        // its subtree, so memory grows with depth × size unless counted.
        let mut text = String::from("a: ");
        for i in 0..150 {
            text.push_str(&format!("&x{i} ["));
        }
        text.push_str(&"1, ".repeat(5000));
        text.push('1');
        text.push_str(&"]".repeat(150));
        text.push('\n');
        match parse(&text) {
            Ok(_) => panic!("refused"),
            Err(p) => assert!(p.message.contains("more than"), "{p:?}"),
        }
        // A long list alone is fine below the limit, and refused above it.
        let list = format!("a: [{}]\n", "1,".repeat(1000));
        assert!(parse(&list).is_ok());
        let list = format!("a: [{}]\n", "1,".repeat(MAX_NODES + 10));
        assert!(parse(&list).is_err());
    }

    #[test]
    fn keys_keep_their_order() {
        let d = doc("z: 1\na: 2\nm: 3\n");
        let keys: Vec<&String> = d
            .value
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["z", "a", "m"]);
    }

    #[test]
    fn positions_of_keys_and_values() {
        let d = doc("name: x\nsources:\n  logs:\n    type: file\n    tags: [a, 'b']\n");
        let span = |p: &str| d.spans.get(p).copied();
        assert_eq!(
            span("/name"),
            Some(Span {
                key: Some(Pos { line: 1, column: 1 }),
                value: Pos { line: 1, column: 7 }
            })
        );
        assert_eq!(
            span("/sources/logs").and_then(|s| s.key),
            Some(Pos { line: 3, column: 3 })
        );
        assert_eq!(
            span("/sources/logs/type").map(|s| s.value),
            Some(Pos {
                line: 4,
                column: 11
            })
        );
        assert_eq!(
            span("/sources/logs/tags/1").map(|s| s.value),
            Some(Pos {
                line: 5,
                column: 15
            })
        );
        // A pointer that does not exist falls back to its nearest ancestor's key.
        assert_eq!(
            d.spans.locate(&d.value, "/sources/logs/path", At::Auto),
            Pos { line: 3, column: 3 }
        );
    }

    #[test]
    fn duplicate_keys_are_reported_and_the_first_wins() {
        let d = doc("a: 1\nb: 2\na: 3\n");
        assert_eq!(d.value, json!({"a": 1, "b": 2}));
        assert_eq!(d.problems.len(), 1);
        assert_eq!(d.problems[0].at, At::Exact(Pos { line: 3, column: 1 }));
        assert!(d.problems[0].message.contains("duplicate key `a`"));
        assert_eq!(
            d.spans.get("/a").map(|s| s.value),
            Some(Pos { line: 1, column: 4 })
        );
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = match parse("a: 1\nb: [1, 2\nc: 3\n") {
            Ok(d) => panic!("expected an error, got {:?}", d.value),
            Err(e) => e,
        };
        assert!(
            err.message.starts_with("YAML syntax error"),
            "{}",
            err.message
        );
        assert!(
            matches!(err.at, At::Exact(p) if p.line >= 2),
            "{:?}",
            err.at
        );
    }

    #[test]
    fn aliases_copy_the_anchored_value() {
        let d = doc("a: &x {k: 1}\nb: *x\n");
        assert_eq!(d.value, json!({"a": {"k": 1}, "b": {"k": 1}}));
    }
}
