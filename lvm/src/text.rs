//! LVM2 text metadata: the generic config tree, its parser and its emitter
//! (libdm config syntax, spec §9).
//!
//! The tree is deliberately schema-free: a [`Section`] is an ordered list of
//! `(key, Node)` pairs, a [`Node`] is either a [`Value`] or a nested section.
//! The VG/PV/LV schema (spec §10) is interpreted elsewhere.
//!
//! Grammar accepted by [`parse`] (a strict subset of what libdm accepts, plus
//! comma-less integer arrays):
//!
//! * a document is a sequence of `key = value` and `name { … }` items; parsing
//!   stops at the first NUL byte;
//! * a key / section name is a bare run of bytes up to whitespace, `#`, `=`,
//!   `{` or `}`, or a quoted string (`"…"` or `'…'`); it must not be empty and
//!   must not start with `[`, `]` or `,`;
//! * `#` starts a comment running to the end of the line, anywhere between
//!   tokens (not inside strings);
//! * integers are an optional sign and digits, converted like C
//!   `strtoll(s, NULL, 0)`: a leading `0` means octal (`010` = 8, `08` is an
//!   error), `0x…` is an error, values outside `i64` are an error;
//! * floats are an optional sign and digits with exactly one `.` (the text is
//!   kept as written);
//! * `"…"` strings know exactly two escapes, `\"` and `\\`; a backslash before
//!   any other character is kept literally; `'…'` strings have no escapes;
//!   strings and keys must be valid UTF-8;
//! * arrays are `[ v, v … ]` of numbers and strings, commas optional, `[]`
//!   empty, types may be mixed, arrays do not nest.
//!
//! Rejected: duplicate keys within one section, sections nested deeper than
//! [`MAX_DEPTH`], input longer than [`MAX_INPUT`], unterminated strings,
//! sections and arrays, garbage tokens and a missing value after `=`.
//!
//! The parser never recurses and never panics; every error names the 1-based
//! line where the problem was found.

use std::collections::HashSet;
use std::fmt::{self, Write as _};

/// Maximum nesting depth of sections (the top level is depth 0; lvm itself
/// needs 4: VG → logical_volumes → LV → segment).
pub const MAX_DEPTH: usize = 16;

/// Hard cap on the text handed to [`parse`] (bytes before the first NUL).
pub const MAX_INPUT: usize = 256 << 20;

/// A value on the right-hand side of `key = …`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    /// A float, kept exactly as written (lvm metadata never uses them).
    Float(String),
    Str(String),
    /// An array of scalars (arrays do not nest in the text format).
    Array(Vec<Value>),
}

/// A section: an ordered list of entries. Keys are unique in parsed trees.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Section {
    pub entries: Vec<(String, Node)>,
}

/// One entry of a section.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Value(Value),
    Section(Section),
}

/// Errors of [`parse`] (all carry the 1-based `line` of the problem, except
/// [`TextError::TooLarge`]) and of the typed accessors of [`Section`] (which
/// name the key).
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("metadata text is {len} bytes, more than the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("line {line}: unexpected {found}; expected {expected}")]
    Unexpected {
        line: usize,
        found: String,
        expected: String,
    },
    #[error("line {line}: missing value after `{key} =` (found {found}); expected a number, a quoted string or an array")]
    MissingValue {
        line: usize,
        key: String,
        found: String,
    },
    #[error("line {line}: invalid number `{text}`: {reason}")]
    BadNumber {
        line: usize,
        text: String,
        reason: &'static str,
    },
    #[error("line {line}: integer `{text}` is out of range; expected a value between -9223372036854775808 and 9223372036854775807")]
    IntOverflow { line: usize, text: String },
    #[error("line {line}: string starting here is not terminated; expected a closing {quote}")]
    UnterminatedString { line: usize, quote: char },
    #[error("line {line}: section `{name}` opened here is not closed at the end of the text; expected `}}`")]
    UnterminatedSection { line: usize, name: String },
    #[error("line {line}: array of `{key}` opened here is not closed at the end of the text; expected `]`")]
    UnterminatedArray { line: usize, key: String },
    #[error("line {line}: nested array in `{key}`; expected numbers and strings only (arrays do not nest)")]
    NestedArray { line: usize, key: String },
    #[error("line {line}: {what} is not valid UTF-8")]
    InvalidUtf8 { line: usize, what: &'static str },
    #[error("line {line}: empty key or section name; expected a non-empty name")]
    EmptyKey { line: usize },
    #[error("line {line}: duplicate key `{key}` in {section}; expected each key at most once per section")]
    DuplicateKey {
        line: usize,
        key: String,
        section: String,
    },
    #[error("line {line}: sections nested deeper than {max} levels")]
    TooDeep { line: usize, max: usize },
    #[error("key `{key}` is missing; expected {expected}")]
    Missing { key: String, expected: &'static str },
    #[error("key `{key}` is {found}; expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("key `{key}` = {value} is out of range; expected {expected}")]
    OutOfRange {
        key: String,
        value: i64,
        expected: &'static str,
    },
}

impl TextError {
    /// The 1-based line of a parse error (`None` for [`TextError::TooLarge`]
    /// and for accessor errors, which have no position).
    pub fn line(&self) -> Option<usize> {
        use TextError::*;
        match self {
            Unexpected { line, .. }
            | MissingValue { line, .. }
            | BadNumber { line, .. }
            | IntOverflow { line, .. }
            | UnterminatedString { line, .. }
            | UnterminatedSection { line, .. }
            | UnterminatedArray { line, .. }
            | NestedArray { line, .. }
            | InvalidUtf8 { line, .. }
            | EmptyKey { line }
            | DuplicateKey { line, .. }
            | TooDeep { line, .. } => Some(*line),
            TooLarge { .. } | Missing { .. } | WrongType { .. } | OutOfRange { .. } => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Tree API
// ---------------------------------------------------------------------------

impl Value {
    /// An array of strings, e.g. `Value::strings(["READ", "WRITE"])`.
    pub fn strings<I, S>(items: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Value::Array(items.into_iter().map(|s| Value::Str(s.into())).collect())
    }

    /// What kind of value this is, for error messages ("an integer", …).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Array(_) => "an array",
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::Array(v)
    }
}

impl From<Value> for Node {
    fn from(v: Value) -> Self {
        Node::Value(v)
    }
}

impl From<Section> for Node {
    fn from(s: Section) -> Self {
        Node::Section(s)
    }
}

/// The emitted form of a value (arrays on one line, as in `["a", "b"]`).
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        write_value(&mut s, self);
        f.write_str(&s)
    }
}

impl Node {
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Value(v) => v.kind(),
            Node::Section(_) => "a section",
        }
    }

    pub fn as_value(&self) -> Option<&Value> {
        match self {
            Node::Value(v) => Some(v),
            Node::Section(_) => None,
        }
    }

    pub fn as_section(&self) -> Option<&Section> {
        match self {
            Node::Section(s) => Some(s),
            Node::Value(_) => None,
        }
    }
}

impl Section {
    pub fn new() -> Self {
        Section::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.entries.iter().map(|(k, n)| (k.as_str(), n))
    }

    /// Child sections in order (e.g. the PVs of `physical_volumes`).
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.entries.iter().filter_map(|(k, n)| match n {
            Node::Section(s) => Some((k.as_str(), s)),
            Node::Value(_) => None,
        })
    }

    /// Appends an entry (no duplicate check: the caller keeps keys unique).
    pub fn push(&mut self, key: impl Into<String>, node: Node) {
        self.entries.push((key.into(), node));
    }

    /// Appends `key = value`.
    pub fn push_value(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.push(key, Node::Value(value.into()));
    }

    /// Appends `key { … }`.
    pub fn push_section(&mut self, key: impl Into<String>, section: Section) {
        self.push(key, Node::Section(section));
    }

    /// Replaces the entry `key` in place, or appends it if absent.
    pub fn set(&mut self, key: impl Into<String>, node: Node) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = node,
            None => self.entries.push((key, node)),
        }
    }

    /// Replaces or appends `key = value`.
    pub fn set_value(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.set(key, Node::Value(value.into()));
    }

    /// Replaces or appends `key { … }`.
    pub fn set_section(&mut self, key: impl Into<String>, section: Section) {
        self.set(key, Node::Section(section));
    }

    /// Removes and returns the entry `key`.
    pub fn remove(&mut self, key: &str) -> Option<Node> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.entries
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, n)| n)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The value of `key`, if present and not a section.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.get(key).and_then(Node::as_value)
    }

    /// The sub-section `key`, if present and a section.
    pub fn section(&self, key: &str) -> Option<&Section> {
        self.get(key).and_then(Node::as_section)
    }

    pub fn section_mut(&mut self, key: &str) -> Option<&mut Section> {
        match self.get_mut(key) {
            Some(Node::Section(s)) => Some(s),
            _ => None,
        }
    }

    /// `key`'s integer; `None` if absent or not an integer.
    pub fn int(&self, key: &str) -> Option<i64> {
        self.value(key).and_then(Value::as_int)
    }

    /// `key`'s string; `None` if absent or not a string.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.value(key).and_then(Value::as_str)
    }

    /// `key`'s array; `None` if absent or not an array.
    pub fn array(&self, key: &str) -> Option<&[Value]> {
        self.value(key).and_then(Value::as_array)
    }

    fn req_node(&self, key: &str, expected: &'static str) -> Result<&Node, TextError> {
        self.get(key).ok_or_else(|| TextError::Missing {
            key: key.to_string(),
            expected,
        })
    }

    fn wrong(key: &str, expected: &'static str, node: &Node) -> TextError {
        TextError::WrongType {
            key: key.to_string(),
            expected,
            found: node.kind(),
        }
    }

    /// `key`'s integer, or an error naming the key.
    pub fn req_int(&self, key: &str) -> Result<i64, TextError> {
        const EXP: &str = "an integer";
        match self.req_node(key, EXP)? {
            Node::Value(Value::Int(i)) => Ok(*i),
            n => Err(Self::wrong(key, EXP, n)),
        }
    }

    /// `key`'s integer as a `u64` (must not be negative).
    pub fn req_u64(&self, key: &str) -> Result<u64, TextError> {
        let v = self.req_int(key)?;
        u64::try_from(v).map_err(|_| TextError::OutOfRange {
            key: key.to_string(),
            value: v,
            expected: "a non-negative integer",
        })
    }

    /// `key`'s integer as a `u32` (0 ..= 4294967295).
    pub fn req_u32(&self, key: &str) -> Result<u32, TextError> {
        let v = self.req_int(key)?;
        u32::try_from(v).map_err(|_| TextError::OutOfRange {
            key: key.to_string(),
            value: v,
            expected: "an integer between 0 and 4294967295",
        })
    }

    /// `key`'s string, or an error naming the key.
    pub fn req_str(&self, key: &str) -> Result<&str, TextError> {
        const EXP: &str = "a string";
        match self.req_node(key, EXP)? {
            Node::Value(Value::Str(s)) => Ok(s),
            n => Err(Self::wrong(key, EXP, n)),
        }
    }

    /// `key`'s sub-section, or an error naming the key.
    pub fn req_section(&self, key: &str) -> Result<&Section, TextError> {
        const EXP: &str = "a section";
        match self.req_node(key, EXP)? {
            Node::Section(s) => Ok(s),
            n => Err(Self::wrong(key, EXP, n)),
        }
    }

    /// `key`'s array, or an error naming the key.
    pub fn req_array(&self, key: &str) -> Result<&[Value], TextError> {
        const EXP: &str = "an array";
        match self.req_node(key, EXP)? {
            Node::Value(Value::Array(a)) => Ok(a),
            n => Err(Self::wrong(key, EXP, n)),
        }
    }

    /// An array of strings (`status`, `flags`, `tags`): `Ok(None)` if absent,
    /// an error if present but not an array of strings. A single string is
    /// accepted as a one-element array, as libdm does (it stores scalars and
    /// arrays alike as value lists).
    pub fn str_array(&self, key: &str) -> Result<Option<Vec<&str>>, TextError> {
        const EXP: &str = "an array of strings";
        let node = match self.get(key) {
            None => return Ok(None),
            Some(n) => n,
        };
        match node {
            Node::Value(Value::Str(s)) => Ok(Some(vec![s.as_str()])),
            Node::Value(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::Str(s) => out.push(s.as_str()),
                        other => {
                            return Err(TextError::WrongType {
                                key: key.to_string(),
                                expected: EXP,
                                found: match other {
                                    Value::Int(_) => "an array holding an integer",
                                    Value::Float(_) => "an array holding a float",
                                    _ => "an array holding an array",
                                },
                            })
                        }
                    }
                }
                Ok(Some(out))
            }
            n => Err(Self::wrong(key, EXP, n)),
        }
    }
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

/// C `isspace` in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Ends a bare key / section name.
fn ends_bare_key(b: u8) -> bool {
    is_space(b) || matches!(b, b'#' | b'=' | b'{' | b'}')
}

/// Ends a number token (anything else glued to a number makes it invalid).
fn ends_number(b: u8) -> bool {
    is_space(b)
        || matches!(
            b,
            b'#' | b',' | b']' | b'[' | b'}' | b'{' | b'=' | b'"' | b'\''
        )
}

const PUNCT: &[u8] = b"{}[],=#\"'";

struct Frame {
    name: String,
    open_line: usize,
    section: Section,
    keys: HashSet<String>,
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    line: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn bump(&mut self) {
        if let Some(b) = self.peek() {
            self.pos += 1;
            if b == b'\n' {
                self.line += 1;
            }
        }
    }

    /// Skips whitespace and `#` comments.
    fn skip_ws(&mut self) {
        while let Some(b) = self.peek() {
            if is_space(b) {
                self.bump();
            } else if b == b'#' {
                while let Some(c) = self.peek() {
                    if c == b'\n' {
                        break;
                    }
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    /// A short description of what is at the cursor, for error messages.
    fn found(&self) -> String {
        let Some(b) = self.peek() else {
            return "end of text".to_string();
        };
        if PUNCT.contains(&b) {
            return format!("`{}`", b as char);
        }
        if !b.is_ascii_graphic() && b < 0x80 {
            return format!("byte 0x{b:02x}");
        }
        let rest = &self.s[self.pos..];
        let end = rest
            .iter()
            .position(|&c| is_space(c) || PUNCT.contains(&c))
            .unwrap_or(rest.len());
        let word = String::from_utf8_lossy(&rest[..end]);
        let mut shown: String = word.chars().take(32).collect();
        if word.chars().nth(32).is_some() {
            shown.push('…');
        }
        format!("`{shown}`")
    }

    fn unexpected(&self, expected: impl Into<String>) -> TextError {
        TextError::Unexpected {
            line: self.line,
            found: self.found(),
            expected: expected.into(),
        }
    }

    /// A quoted string; the cursor is on the opening quote.
    fn string(&mut self, what: &'static str) -> Result<String, TextError> {
        let start_line = self.line;
        let quote = self.peek().unwrap_or(b'"');
        self.bump();
        let mut buf = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(TextError::UnterminatedString {
                    line: start_line,
                    quote: quote as char,
                });
            };
            if b == quote {
                self.bump();
                break;
            }
            if quote == b'"' && b == b'\\' {
                if let Some(next @ (b'"' | b'\\')) = self.s.get(self.pos + 1).copied() {
                    buf.push(next);
                    self.pos += 2;
                    continue;
                }
            }
            buf.push(b);
            self.bump();
        }
        String::from_utf8(buf).map_err(|_| TextError::InvalidUtf8 {
            line: start_line,
            what,
        })
    }

    /// A key or section name; the cursor is on its first byte, which is not
    /// whitespace, `#` or `}`.
    fn key(&mut self) -> Result<String, TextError> {
        let line = self.line;
        let key = match self.peek() {
            Some(b'"' | b'\'') => self.string("key")?,
            Some(b'=' | b'{' | b'[' | b']' | b',') | None => {
                return Err(self.unexpected("a key or section name"));
            }
            Some(_) => {
                let start = self.pos;
                while let Some(b) = self.peek() {
                    if ends_bare_key(b) {
                        break;
                    }
                    self.pos += 1;
                }
                std::str::from_utf8(&self.s[start..self.pos])
                    .map_err(|_| TextError::InvalidUtf8 { line, what: "key" })?
                    .to_string()
            }
        };
        if key.is_empty() {
            return Err(TextError::EmptyKey { line });
        }
        Ok(key)
    }

    /// A number; the cursor is on its first byte.
    fn number(&mut self) -> Result<Value, TextError> {
        let line = self.line;
        let start = self.pos;
        while let Some(b) = self.peek() {
            if ends_number(b) {
                break;
            }
            self.pos += 1;
        }
        let tok = &self.s[start..self.pos];
        let text = || {
            let t = String::from_utf8_lossy(tok);
            if t.chars().count() > 40 {
                let mut s: String = t.chars().take(40).collect();
                s.push('…');
                s
            } else {
                t.into_owned()
            }
        };
        let bad = |reason| {
            Err(TextError::BadNumber {
                line,
                text: text(),
                reason,
            })
        };
        let (neg, body) = match tok.first() {
            Some(b'-') => (true, &tok[1..]),
            Some(b'+') => (false, &tok[1..]),
            _ => (false, tok),
        };
        let dots = body.iter().filter(|&&b| b == b'.').count();
        let digits = body.iter().filter(|b| b.is_ascii_digit()).count();
        if digits + dots != body.len() {
            return if body.len() >= 2 && body[0] == b'0' && matches!(body[1], b'x' | b'X') {
                bad("hexadecimal numbers are not accepted; expected decimal digits")
            } else {
                bad("expected an optional sign followed by digits (with at most one `.`)")
            };
        }
        if digits == 0 {
            return bad("expected at least one digit");
        }
        match dots {
            0 => {}
            1 => return Ok(Value::Float(String::from_utf8_lossy(tok).into_owned())),
            _ => return bad("more than one `.`; expected an integer or a float"),
        }
        // strtoll(…, 0): a leading 0 means octal.
        let radix: u64 = if body.len() > 1 && body[0] == b'0' {
            8
        } else {
            10
        };
        let mut mag: u64 = 0;
        for &d in body {
            let d = u64::from(d - b'0');
            if d >= radix {
                return bad("a leading 0 means octal, and octal digits are 0-7");
            }
            mag = match mag.checked_mul(radix).and_then(|m| m.checked_add(d)) {
                Some(m) => m,
                None => return Err(TextError::IntOverflow { line, text: text() }),
            };
        }
        let v = if neg {
            if mag == 1 << 63 {
                Some(i64::MIN)
            } else {
                i64::try_from(mag).ok().map(|m| -m)
            }
        } else {
            i64::try_from(mag).ok()
        };
        v.map(Value::Int)
            .ok_or_else(|| TextError::IntOverflow { line, text: text() })
    }

    /// A scalar value if the cursor is on one.
    fn scalar(&mut self) -> Option<Result<Value, TextError>> {
        match self.peek()? {
            b'"' | b'\'' => Some(self.string("string").map(Value::Str)),
            b'0'..=b'9' | b'+' | b'-' | b'.' => Some(self.number()),
            _ => None,
        }
    }

    /// The value after `key =`; the cursor is just past the `=`.
    fn value(&mut self, key: &str) -> Result<Value, TextError> {
        self.skip_ws();
        if self.peek() == Some(b'[') {
            return self.array(key);
        }
        match self.scalar() {
            Some(v) => v,
            None => Err(TextError::MissingValue {
                line: self.line,
                key: key.to_string(),
                found: self.found(),
            }),
        }
    }

    /// An array; the cursor is on the `[`.
    fn array(&mut self, key: &str) -> Result<Value, TextError> {
        let open_line = self.line;
        self.bump();
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None => {
                    return Err(TextError::UnterminatedArray {
                        line: open_line,
                        key: key.to_string(),
                    })
                }
                Some(b']') => {
                    self.bump();
                    return Ok(Value::Array(items));
                }
                Some(b'[') => {
                    return Err(TextError::NestedArray {
                        line: self.line,
                        key: key.to_string(),
                    })
                }
                Some(_) => match self.scalar() {
                    Some(v) => items.push(v?),
                    None => {
                        return Err(self.unexpected("a number, a quoted string or `]` in the array"))
                    }
                },
            }
            self.skip_ws();
            if self.peek() == Some(b',') {
                self.bump();
            }
        }
    }

    fn document(&mut self) -> Result<Section, TextError> {
        let mut stack = vec![Frame {
            name: String::new(),
            open_line: 1,
            section: Section::new(),
            keys: HashSet::new(),
        }];
        loop {
            self.skip_ws();
            match self.peek() {
                None => {
                    return match stack.pop() {
                        Some(f) if stack.is_empty() => Ok(f.section),
                        Some(f) => Err(TextError::UnterminatedSection {
                            line: f.open_line,
                            name: f.name,
                        }),
                        None => Ok(Section::new()),
                    };
                }
                Some(b'}') => {
                    if stack.len() < 2 {
                        return Err(self.unexpected("a key or section name (no section is open)"));
                    }
                    self.bump();
                    if let Some(done) = stack.pop() {
                        if let Some(parent) = stack.last_mut() {
                            parent.section.push(done.name, Node::Section(done.section));
                        }
                    }
                }
                Some(_) => {
                    let line = self.line;
                    let key = self.key()?;
                    self.skip_ws();
                    let is_section = match self.peek() {
                        Some(b'=') => false,
                        Some(b'{') => true,
                        _ => return Err(self.unexpected(format!("`=` or `{{` after `{key}`"))),
                    };
                    self.bump();
                    let depth = stack.len();
                    let Some(top) = stack.last_mut() else {
                        return Ok(Section::new());
                    };
                    if top.keys.contains(&key) {
                        let section = if depth == 1 {
                            "the top level".to_string()
                        } else {
                            format!("section `{}`", top.name)
                        };
                        return Err(TextError::DuplicateKey { line, key, section });
                    }
                    if is_section {
                        if depth > MAX_DEPTH {
                            return Err(TextError::TooDeep {
                                line,
                                max: MAX_DEPTH,
                            });
                        }
                        top.keys.insert(key.clone());
                        stack.push(Frame {
                            name: key,
                            open_line: line,
                            section: Section::new(),
                            keys: HashSet::new(),
                        });
                    } else {
                        let v = self.value(&key)?;
                        top.keys.insert(key.clone());
                        top.section.push(key, Node::Value(v));
                    }
                }
            }
        }
    }
}

/// Parses LVM2 text metadata. Parsing stops at the first NUL byte (metadata
/// areas store the text NUL-terminated); the text before it must not exceed
/// [`MAX_INPUT`] bytes.
pub fn parse(text: &[u8]) -> Result<Section, TextError> {
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    if end > MAX_INPUT {
        return Err(TextError::TooLarge {
            len: end,
            max: MAX_INPUT,
        });
    }
    Parser {
        s: &text[..end],
        pos: 0,
        line: 1,
    }
    .document()
}

// ---------------------------------------------------------------------------
// Emitter
// ---------------------------------------------------------------------------

/// Whether `key` can be written without quotes (and is read back unchanged
/// by libdm as well as by [`parse`]).
fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"#={}\"'[],".contains(&b))
}

fn write_quoted(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Writes `s` as a double-quoted string, escaping `"` and `\`.
pub fn quote(s: &str) -> String {
    let mut out = String::new();
    write_quoted(&mut out, s);
    out
}

fn write_key(out: &mut String, key: &str) {
    if is_bare_key(key) {
        out.push_str(key);
    } else {
        write_quoted(out, key);
    }
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => out.push_str(f),
        Value::Str(s) => write_quoted(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
    }
}

/// `stripes = [` / one `"pvN", PE` pair per line / `]`, as lvm writes it.
fn write_stripes(out: &mut String, items: &[Value]) {
    out.push_str("[\n");
    let pairs = items.len().div_ceil(2);
    for (i, pair) in items.chunks(2).enumerate() {
        for (j, item) in pair.iter().enumerate() {
            if j > 0 {
                out.push_str(", ");
            }
            write_value(out, item);
        }
        if i + 1 < pairs {
            out.push(',');
        }
        out.push('\n');
    }
    out.push(']');
}

/// Emits a tree in lvm's raw on-disk style: `key = value` lines without
/// indentation, sections as `name {` … `}` preceded by a blank line (except a
/// section that opens the document), integers in decimal, strings
/// double-quoted with `"` and `\` escaped, arrays on one line except
/// `stripes`, which gets one `"pvN", PE` pair per line.
///
/// `parse(emit(t)) == t` for every tree whose keys are non-empty and unique
/// per section, whose floats are valid float text, whose arrays hold only
/// scalars, whose strings and keys contain no NUL and whose depth is at most
/// [`MAX_DEPTH`]. The writer must not hand anything else to lvm.
pub fn emit(root: &Section) -> String {
    let mut out = String::new();
    emit_into(&mut out, root);
    out
}

/// [`emit`], appending to `out`.
pub fn emit_into(out: &mut String, root: &Section) {
    let mut e = Emitter {
        out: std::mem::take(out),
        first: true,
    };
    e.entries(root);
    *out = e.out;
}

/// Streams lvm's raw style key by key, without building a tree: the commit
/// path writes megabytes of it. Same output rules as [`emit`].
pub struct Emitter {
    out: String,
    first: bool,
}

impl Emitter {
    pub fn with_capacity(bytes: usize) -> Emitter {
        Emitter {
            out: String::with_capacity(bytes),
            first: true,
        }
    }

    fn key(&mut self, key: &str) {
        write_key(&mut self.out, key);
        self.out.push_str(" = ");
        self.first = false;
    }

    pub fn int(&mut self, key: &str, v: i64) {
        self.key(key);
        let _ = writeln!(self.out, "{v}");
    }

    pub fn str(&mut self, key: &str, v: &str) {
        self.key(key);
        write_quoted(&mut self.out, v);
        self.out.push('\n');
    }

    pub fn strs(&mut self, key: &str, v: &[String]) {
        self.key(key);
        self.out.push('[');
        for (i, s) in v.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            write_quoted(&mut self.out, s);
        }
        self.out.push_str("]\n");
    }

    pub fn value(&mut self, key: &str, v: &Value) {
        self.key(key);
        match v {
            Value::Array(items) if key == "stripes" && !items.is_empty() => {
                write_stripes(&mut self.out, items)
            }
            _ => write_value(&mut self.out, v),
        }
        self.out.push('\n');
    }

    /// `stripes = [` with one `"pvN", PE` pair per line.
    pub fn stripes<'a>(&mut self, pairs: impl ExactSizeIterator<Item = (&'a str, u64)>) {
        self.key("stripes");
        self.out.push_str("[\n");
        let n = pairs.len();
        for (i, (pv, pe)) in pairs.enumerate() {
            write_quoted(&mut self.out, pv);
            let _ = write!(self.out, ", {pe}");
            self.out.push_str(if i + 1 < n { ",\n" } else { "\n" });
        }
        self.out.push_str("]\n");
    }

    pub fn open(&mut self, key: &str) {
        if !self.first {
            self.out.push('\n');
        }
        write_key(&mut self.out, key);
        self.out.push_str(" {\n");
        self.first = false;
    }

    pub fn close(&mut self) {
        self.out.push_str("}\n");
    }

    /// Every entry of `root`, nested sections included (iteratively: no recursion).
    pub fn entries(&mut self, root: &Section) {
        let mut stack = vec![root.entries.iter()];
        while let Some(it) = stack.last_mut() {
            match it.next() {
                None => {
                    stack.pop();
                    if !stack.is_empty() {
                        self.close();
                    }
                }
                Some((key, Node::Value(v))) => self.value(key, v),
                Some((key, Node::Section(s))) => {
                    self.open(key);
                    stack.push(s.entries.iter());
                }
            }
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn int(i: i64) -> Node {
        Node::Value(Value::Int(i))
    }
    fn s(v: &str) -> Node {
        Node::Value(Value::Str(v.to_string()))
    }
    fn strs(v: &[&str]) -> Node {
        Node::Value(Value::strings(v.iter().copied()))
    }
    fn sec(entries: Vec<(&str, Node)>) -> Section {
        Section {
            entries: entries
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
        }
    }
    fn node(entries: Vec<(&str, Node)>) -> Node {
        Node::Section(sec(entries))
    }
    fn one(text: &str) -> Value {
        let t = parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(t.len(), 1, "{t:?}");
        t.entries[0].1.as_value().cloned().expect("a value")
    }
    fn err(text: &str) -> TextError {
        match parse(text.as_bytes()) {
            Ok(t) => panic!("{text:?} parsed: {t:?}"),
            Err(e) => e,
        }
    }

    const RAW_SAMPLE: &str = "vg0 {
id = \"Xq3Jd8-aB1c-dE2f-gH3i-jK4l-mN5o-pQ6r7s\"
seqno = 3
format = \"lvm2\"
status = [\"RESIZEABLE\", \"READ\", \"WRITE\"]
flags = []
extent_size = 8192
max_lv = 0
max_pv = 0
metadata_copies = 0

physical_volumes {

pv0 {
id = \"aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg\"
device = \"/dev/loop0\"

status = [\"ALLOCATABLE\"]
flags = []
dev_size = 131072
pe_start = 2048
pe_count = 15
}

pv1 {
id = \"hhhhhh-iiii-jjjj-kkkk-llll-mmmm-nnnnnn\"
device = \"/dev/loop1\"

status = [\"ALLOCATABLE\"]
flags = []
dev_size = 131072
pe_start = 2048
pe_count = 15
}
}

logical_volumes {

lv0 {
id = \"LV0aaa-bbbb-cccc-dddd-eeee-ffff-gggggg\"
status = [\"READ\", \"WRITE\", \"VISIBLE\"]
flags = []
creation_time = 1700000000
creation_host = \"h\"
segment_count = 2

segment1 {
start_extent = 0
extent_count = 2

type = \"striped\"
stripe_count = 1

stripes = [
\"pv0\", 0
]
}

segment2 {
start_extent = 2
extent_count = 1

type = \"striped\"
stripe_count = 1

stripes = [
\"pv1\", 4
]
}
}

lv1 {
id = \"LV1aaa-bbbb-cccc-dddd-eeee-ffff-gggggg\"
status = [\"READ\", \"WRITE\", \"VISIBLE\"]
flags = []
creation_time = 1700000001
creation_host = \"h\"
segment_count = 1

segment1 {
start_extent = 0
extent_count = 4

type = \"striped\"
stripe_count = 2
stripe_size = 128

stripes = [
\"pv0\", 2,
\"pv1\", 0
]
}
}
}

}
# Generated by LVM2 version 2.03.16(2) (2022-05-18): Tue Nov 14 22:13:20 2023

contents = \"Text Format Volume Group\"
version = 1

description = \"Write from lvcreate -n lv1 -i 2 -l 4 vg0 --addtag \\\"x\\\".\"

creation_host = \"h\"\t# Linux h 6.1 #1 SMP x86_64
creation_time = 1700000000\t# Tue Nov 14 22:13:20 2023

\0stale old metadata { garbage";

    fn stripe_seg(
        start: i64,
        count: i64,
        stripe_count: i64,
        size: Option<i64>,
        stripes: Vec<Value>,
    ) -> Node {
        let mut e = vec![
            ("start_extent", int(start)),
            ("extent_count", int(count)),
            ("type", s("striped")),
            ("stripe_count", int(stripe_count)),
        ];
        if let Some(sz) = size {
            e.push(("stripe_size", int(sz)));
        }
        e.push(("stripes", Node::Value(Value::Array(stripes))));
        node(e)
    }

    fn pv(id: &str, dev: &str) -> Node {
        node(vec![
            ("id", s(id)),
            ("device", s(dev)),
            ("status", strs(&["ALLOCATABLE"])),
            ("flags", strs(&[])),
            ("dev_size", int(131072)),
            ("pe_start", int(2048)),
            ("pe_count", int(15)),
        ])
    }

    fn expected_sample() -> Section {
        let p = |n: &str, pe: i64| vec![Value::from(n), Value::Int(pe)];
        let lv0 = node(vec![
            ("id", s("LV0aaa-bbbb-cccc-dddd-eeee-ffff-gggggg")),
            ("status", strs(&["READ", "WRITE", "VISIBLE"])),
            ("flags", strs(&[])),
            ("creation_time", int(1700000000)),
            ("creation_host", s("h")),
            ("segment_count", int(2)),
            ("segment1", stripe_seg(0, 2, 1, None, p("pv0", 0))),
            ("segment2", stripe_seg(2, 1, 1, None, p("pv1", 4))),
        ]);
        let mut stripes = p("pv0", 2);
        stripes.extend(p("pv1", 0));
        let lv1 = node(vec![
            ("id", s("LV1aaa-bbbb-cccc-dddd-eeee-ffff-gggggg")),
            ("status", strs(&["READ", "WRITE", "VISIBLE"])),
            ("flags", strs(&[])),
            ("creation_time", int(1700000001)),
            ("creation_host", s("h")),
            ("segment_count", int(1)),
            ("segment1", stripe_seg(0, 4, 2, Some(128), stripes)),
        ]);
        sec(vec![
            (
                "vg0",
                node(vec![
                    ("id", s("Xq3Jd8-aB1c-dE2f-gH3i-jK4l-mN5o-pQ6r7s")),
                    ("seqno", int(3)),
                    ("format", s("lvm2")),
                    ("status", strs(&["RESIZEABLE", "READ", "WRITE"])),
                    ("flags", strs(&[])),
                    ("extent_size", int(8192)),
                    ("max_lv", int(0)),
                    ("max_pv", int(0)),
                    ("metadata_copies", int(0)),
                    (
                        "physical_volumes",
                        node(vec![
                            (
                                "pv0",
                                pv("aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg", "/dev/loop0"),
                            ),
                            (
                                "pv1",
                                pv("hhhhhh-iiii-jjjj-kkkk-llll-mmmm-nnnnnn", "/dev/loop1"),
                            ),
                        ]),
                    ),
                    ("logical_volumes", node(vec![("lv0", lv0), ("lv1", lv1)])),
                ]),
            ),
            ("contents", s("Text Format Volume Group")),
            ("version", int(1)),
            (
                "description",
                s("Write from lvcreate -n lv1 -i 2 -l 4 vg0 --addtag \"x\"."),
            ),
            ("creation_host", s("h")),
            ("creation_time", int(1700000000)),
        ])
    }

    #[test]
    fn parses_lvm_raw_sample() {
        let t = parse(RAW_SAMPLE.as_bytes()).unwrap();
        assert_eq!(t, expected_sample());
        // typed accessors on the real tree
        let vg = t.req_section("vg0").unwrap();
        assert_eq!(vg.req_u32("seqno").unwrap(), 3);
        assert_eq!(
            vg.str_array("status").unwrap(),
            Some(vec!["RESIZEABLE", "READ", "WRITE"])
        );
        assert_eq!(vg.str_array("tags").unwrap(), None);
        let lvs = vg.req_section("logical_volumes").unwrap();
        let names: Vec<&str> = lvs.sections().map(|(k, _)| k).collect();
        assert_eq!(names, ["lv0", "lv1"]);
        let seg = lvs
            .req_section("lv1")
            .unwrap()
            .req_section("segment1")
            .unwrap();
        assert_eq!(seg.int("stripe_size"), Some(128));
        assert_eq!(seg.req_array("stripes").unwrap().len(), 4);
        assert_eq!(t.req_str("contents").unwrap(), "Text Format Volume Group");
    }

    #[test]
    fn sample_round_trips() {
        let t = parse(RAW_SAMPLE.as_bytes()).unwrap();
        let text = emit(&t);
        assert_eq!(parse(text.as_bytes()).unwrap(), t);
        assert_eq!(emit(&parse(text.as_bytes()).unwrap()), text);
    }

    #[test]
    fn parses_backup_style_with_tabs() {
        let text = "# Generated by LVM2 version 2.03.16(2) (2022-05-18): Tue Nov 14 22:13:20 2023

contents = \"Text Format Volume Group\"
version = 1

description = \"Created *after* executing 'vgcfgbackup'\"

creation_host = \"h\"\t# Linux h 6.1 #1 SMP x86_64
creation_time = 1700000000\t# Tue Nov 14 22:13:20 2023

vg0 {
\tid = \"Xq3Jd8-aB1c-dE2f-gH3i-jK4l-mN5o-pQ6r7s\"
\tseqno = 3
\tformat = \"lvm2\"\t\t\t# informational
\tstatus = [\"RESIZEABLE\", \"READ\", \"WRITE\"]
\tflags = []
\textent_size = 8192\t\t# 4 Megabytes
\tmax_lv = 0
\tmax_pv = 0
\tmetadata_copies = 0

\tphysical_volumes {

\t\tpv0 {
\t\t\tid = \"aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg\"
\t\t\tdevice = \"/dev/loop0\"\t# Hint only

\t\t\tstatus = [\"ALLOCATABLE\"]
\t\t\tflags = []
\t\t\tdev_size = 131072\t# 64 Megabytes
\t\t\tpe_start = 2048
\t\t\tpe_count = 15\t# 60 Megabytes
\t\t}
\t}

\tlogical_volumes {

\t\tlv0 {
\t\t\tsegment_count = 1

\t\t\tsegment1 {
\t\t\t\tstart_extent = 0
\t\t\t\textent_count = 2\t# 8 Megabytes

\t\t\t\ttype = \"striped\"
\t\t\t\tstripe_count = 1\t# linear

\t\t\t\tstripes = [
\t\t\t\t\t\"pv0\", 0
\t\t\t\t]
\t\t\t}
\t\t}
\t}

}
";
        let t = parse(text.as_bytes()).unwrap();
        let keys: Vec<&str> = t.iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "contents",
                "version",
                "description",
                "creation_host",
                "creation_time",
                "vg0"
            ]
        );
        assert_eq!(
            t.req_str("description").unwrap(),
            "Created *after* executing 'vgcfgbackup'"
        );
        let vg = t.req_section("vg0").unwrap();
        assert_eq!(vg.req_int("extent_size").unwrap(), 8192);
        assert_eq!(vg.str("format"), Some("lvm2"));
        let pv0 = vg
            .req_section("physical_volumes")
            .unwrap()
            .req_section("pv0")
            .unwrap();
        assert_eq!(pv0.req_str("device").unwrap(), "/dev/loop0");
        assert_eq!(pv0.req_u64("pe_count").unwrap(), 15);
        let seg = vg
            .req_section("logical_volumes")
            .unwrap()
            .req_section("lv0")
            .unwrap()
            .req_section("segment1")
            .unwrap();
        assert_eq!(
            seg.array("stripes"),
            Some(&[Value::from("pv0"), Value::Int(0)][..])
        );
    }

    #[test]
    fn integers_are_strtoll_base_0() {
        assert_eq!(one("a = 010"), Value::Int(8));
        assert_eq!(one("a = -010"), Value::Int(-8));
        assert_eq!(one("a = +010"), Value::Int(8));
        assert_eq!(one("a = 0"), Value::Int(0));
        assert_eq!(one("a = 00"), Value::Int(0));
        assert_eq!(one("a = -0"), Value::Int(0));
        assert_eq!(one("a = 0777"), Value::Int(511));
        assert_eq!(one("a = 10"), Value::Int(10));
        assert_eq!(one("a = +7"), Value::Int(7));
        assert_eq!(one("a = 9223372036854775807"), Value::Int(i64::MAX));
        assert_eq!(one("a = -9223372036854775808"), Value::Int(i64::MIN));
        assert_eq!(one("a = 0777777777777777777777"), Value::Int(i64::MAX));
        assert_eq!(one("a = -01000000000000000000000"), Value::Int(i64::MIN));
    }

    #[test]
    fn bad_integers() {
        for (text, line) in [
            ("a = 0x0", 1),
            ("\na = 0X1f", 2),
            ("a = 08", 1),
            ("a = 019", 1),
            ("a = 12abc", 1),
        ] {
            match err(text) {
                TextError::BadNumber { line: l, .. } => assert_eq!(l, line, "{text}"),
                e => panic!("{text}: {e}"),
            }
        }
        assert!(
            err("a = 0x0").to_string().contains("hexadecimal"),
            "{}",
            err("a = 0x0")
        );
        assert!(err("a = 08").to_string().contains("octal"));
        for text in [
            "a = 9223372036854775808",
            "a = -9223372036854775809",
            "a = 01000000000000000000000",
            "a = 99999999999999999999999999999999999999999999",
            "a = [1,\n 18446744073709551616]",
        ] {
            match err(text) {
                TextError::IntOverflow { line, .. } => {
                    assert_eq!(line, 1 + text.matches('\n').count())
                }
                e => panic!("{text}: {e}"),
            }
        }
        for text in [
            "a = -",
            "a = +",
            "a = 1.2.3",
            "a = .",
            "a = 1e5",
            "a = --1",
            "a = 1-2",
        ] {
            assert!(
                matches!(err(text), TextError::BadNumber { line: 1, .. }),
                "{text}"
            );
        }
    }

    #[test]
    fn floats_keep_their_text() {
        assert_eq!(one("a = 1.5"), Value::Float("1.5".into()));
        assert_eq!(one("a = -0.250"), Value::Float("-0.250".into()));
        assert_eq!(one("a = .5"), Value::Float(".5".into()));
        assert_eq!(one("a = 1."), Value::Float("1.".into()));
        assert_eq!(one("a = 010.5"), Value::Float("010.5".into()));
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(one(r#"a = "x\"y\\z""#), Value::from(r#"x"y\z"#));
        // a backslash before any other character stays literal
        assert_eq!(one(r#"a = "\n\t\d\\""#), Value::from(r"\n\t\d\"));
        assert_eq!(one(r#"a = "a\\\"b""#), Value::from(r#"a\"b"#));
        // single quotes: no escapes at all
        assert_eq!(one(r#"a = 'x\"y"z'"#), Value::from(r#"x\"y"z"#));
        assert_eq!(one(r"a = 'ends in \'"), Value::from(r"ends in \"));
        assert_eq!(one("a = \"\""), Value::from(""));
        assert_eq!(
            one("a = \"two\nlines # not a comment\""),
            Value::from("two\nlines # not a comment")
        );
        assert_eq!(one("a = \"ünïcødé ✓\""), Value::from("ünïcødé ✓"));
        // line counting continues correctly after a multi-line string
        match err("a = \"x\ny\"\nb = ?") {
            TextError::MissingValue { line, key, .. } => assert_eq!((line, key.as_str()), (3, "b")),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn arrays() {
        assert_eq!(one("a = []"), Value::Array(vec![]));
        assert_eq!(one("a = [ ]"), Value::Array(vec![]));
        assert_eq!(one(r#"a = ["x" "y" 'z']"#), Value::strings(["x", "y", "z"]));
        assert_eq!(
            one("a = [1 2 3]"),
            Value::Array(vec![Value::Int(1), Value::Int(2), Value::Int(3)])
        );
        assert_eq!(
            one("a = [\n\"pv0\", 0,\n\"pv1\", 010,\n]"),
            Value::Array(vec![
                Value::from("pv0"),
                Value::Int(0),
                Value::from("pv1"),
                Value::Int(8)
            ])
        );
        assert_eq!(
            one("a = [1, 2.5, \"s\" # comment ]\n, 'q']"),
            Value::Array(vec![
                Value::Int(1),
                Value::Float("2.5".into()),
                Value::from("s"),
                Value::from("q")
            ])
        );
    }

    #[test]
    fn comments_and_whitespace() {
        let t =
            parse(b"# leading\n a=1# trailing\n\tb\t=\t\"#x\"   # c\nsec{c=[1,#in array\n2]}# end")
                .unwrap();
        assert_eq!(
            t,
            sec(vec![
                ("a", int(1)),
                ("b", s("#x")),
                (
                    "sec",
                    node(vec![(
                        "c",
                        Node::Value(Value::Array(vec![Value::Int(1), Value::Int(2)]))
                    )])
                ),
            ])
        );
        assert_eq!(parse(b"").unwrap(), Section::new());
        assert_eq!(parse(b"  \n# only a comment").unwrap(), Section::new());
        assert_eq!(
            parse(b"a = 1 b = 2").unwrap(),
            sec(vec![("a", int(1)), ("b", int(2))])
        );
    }

    #[test]
    fn nul_terminates_the_text() {
        assert_eq!(
            parse(b"a = 1\n\0b = }}} garbage").unwrap(),
            sec(vec![("a", int(1))])
        );
        assert_eq!(parse(b"\0a = 1").unwrap(), Section::new());
        assert!(matches!(
            parse(b"a = \"abc\0def\""),
            Err(TextError::UnterminatedString { line: 1, .. })
        ));
        assert!(matches!(
            parse(b"s {\na = 1\n\0}"),
            Err(TextError::UnterminatedSection { line: 1, .. })
        ));
    }

    #[test]
    fn keys() {
        let t =
            parse(b"\"my key\" = 1\n'x{y}' { \"q\\\"\" = 2 }\n1vg.a+b_c-d { }\na\\b = 3").unwrap();
        assert_eq!(
            t,
            sec(vec![
                ("my key", int(1)),
                ("x{y}", node(vec![("q\"", int(2))])),
                ("1vg.a+b_c-d", node(vec![])),
                ("a\\b", int(3)),
            ])
        );
        assert!(matches!(err("\"\" = 1"), TextError::EmptyKey { line: 1 }));
        assert!(matches!(err("\n'' { }"), TextError::EmptyKey { line: 2 }));
    }

    #[test]
    fn error_variants_carry_lines() {
        type Case = (&'static str, usize, fn(&TextError) -> bool);
        let cases: Vec<Case> = vec![
            ("a = 1\n}", 2, |e| matches!(e, TextError::Unexpected { .. })),
            ("a = 1\nb 2", 2, |e| {
                matches!(e, TextError::Unexpected { .. })
            }),
            ("a = 1\nb", 2, |e| matches!(e, TextError::Unexpected { .. })),
            ("a = 1\n= 2", 2, |e| {
                matches!(e, TextError::Unexpected { .. })
            }),
            ("x {\n[ = 1 }", 2, |e| {
                matches!(e, TextError::Unexpected { .. })
            }),
            ("a = [1,\n}]", 2, |e| {
                matches!(e, TextError::Unexpected { .. })
            }),
            ("a = [1,\n,2]", 2, |e| {
                matches!(e, TextError::Unexpected { .. })
            }),
            ("a = 1\nb =\n", 3, |e| {
                matches!(e, TextError::MissingValue { .. })
            }),
            ("a =\nb = 2", 2, |e| {
                matches!(e, TextError::MissingValue { .. })
            }),
            ("s {\na = }", 2, |e| {
                matches!(e, TextError::MissingValue { .. })
            }),
            ("a = garbage", 1, |e| {
                matches!(e, TextError::MissingValue { .. })
            }),
            ("\n\na = 0x10", 3, |e| {
                matches!(e, TextError::BadNumber { .. })
            }),
            ("a = 1\nb = 99999999999999999999", 2, |e| {
                matches!(e, TextError::IntOverflow { .. })
            }),
            ("a = 1\nb = \"abc\n\n", 2, |e| {
                matches!(e, TextError::UnterminatedString { quote: '"', .. })
            }),
            ("a = 1\nb = 'abc", 2, |e| {
                matches!(e, TextError::UnterminatedString { quote: '\'', .. })
            }),
            ("a = \"abc\\\"", 1, |e| {
                matches!(e, TextError::UnterminatedString { .. })
            }),
            ("x {\ny {\n}\n", 1, |e| {
                matches!(e, TextError::UnterminatedSection { .. })
            }),
            ("x {\ny {\na = 1", 2, |e| {
                matches!(e, TextError::UnterminatedSection { .. })
            }),
            ("a = 1\nb = [1, 2\n", 2, |e| {
                matches!(e, TextError::UnterminatedArray { .. })
            }),
            ("a = [\n1, [2]]", 2, |e| {
                matches!(e, TextError::NestedArray { .. })
            }),
            ("\"\" = 1", 1, |e| matches!(e, TextError::EmptyKey { .. })),
            ("s {\na = 1\na = 2\n}", 3, |e| {
                matches!(e, TextError::DuplicateKey { .. })
            }),
            ("a = 1\n\na { }", 3, |e| {
                matches!(e, TextError::DuplicateKey { .. })
            }),
        ];
        for (text, line, is) in cases {
            let e = err(text);
            assert!(is(&e), "{text:?}: {e:?}");
            assert_eq!(e.line(), Some(line), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")), "{e}");
        }
        // invalid UTF-8 as raw bytes, in a key and in a string
        assert!(matches!(
            parse(b"a = 1\nk\xff = 1"),
            Err(TextError::InvalidUtf8 {
                line: 2,
                what: "key"
            })
        ));
        assert!(matches!(
            parse(b"a = '\xc3'"),
            Err(TextError::InvalidUtf8 {
                line: 1,
                what: "string"
            })
        ));
        // messages name the problem and the expectation
        let e = err("vg {\nid = 1\nid = 2\n}");
        assert_eq!(e.to_string(), "line 3: duplicate key `id` in section `vg`; expected each key at most once per section");
        let e = err("a = 1\nb 2");
        assert_eq!(
            e.to_string(),
            "line 2: unexpected `2`; expected `=` or `{` after `b`"
        );
        let e = err("a =");
        assert_eq!(
            e.to_string(),
            "line 1: missing value after `a =` (found end of text); expected a number, a quoted string or an array"
        );
    }

    #[test]
    fn depth_limit() {
        let ok = "a {\n".repeat(MAX_DEPTH) + &"}\n".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
        let deep = "a {\n".repeat(MAX_DEPTH + 1) + &"}\n".repeat(MAX_DEPTH + 1);
        match err(&deep) {
            TextError::TooDeep { line, max } => assert_eq!((line, max), (MAX_DEPTH + 1, MAX_DEPTH)),
            e => panic!("{e}"),
        }
        let huge = "a { ".repeat(100_000);
        let t0 = std::time::Instant::now();
        assert!(matches!(
            parse(huge.as_bytes()),
            Err(TextError::TooDeep { .. })
        ));
        let arrays = format!("a = {}", "[".repeat(100_000));
        assert!(matches!(
            parse(arrays.as_bytes()),
            Err(TextError::NestedArray { .. })
        ));
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn too_large() {
        let mut big = vec![b' '; MAX_INPUT + 1];
        assert!(
            matches!(parse(&big), Err(TextError::TooLarge { len, .. }) if len == MAX_INPUT + 1)
        );
        big[10] = 0; // only the text before the NUL counts
        assert_eq!(parse(&big).unwrap(), Section::new());
    }

    #[test]
    fn emits_lvm_raw_style() {
        let mut seg = Section::new();
        seg.push_value("start_extent", 0i64);
        seg.push_value("extent_count", 4i64);
        seg.push_value("type", "striped");
        seg.push_value("stripe_count", 2i64);
        seg.push_value("stripe_size", 128i64);
        seg.push_value(
            "stripes",
            vec![
                Value::from("pv0"),
                Value::Int(2),
                Value::from("pv1"),
                Value::Int(0),
            ],
        );
        let mut lv = Section::new();
        lv.push_value("status", Value::strings(["READ", "WRITE", "VISIBLE"]));
        lv.push_value("flags", Value::Array(vec![]));
        lv.push_section("segment1", seg);
        let mut lvs = Section::new();
        lvs.push_section("lv0", lv);
        let mut vg = Section::new();
        vg.push_value("id", "abc");
        vg.push_value("seqno", 3u32);
        vg.push_section("logical_volumes", lvs);
        let mut root = Section::new();
        root.push_section("vg0", vg);
        root.push_value("contents", "Text Format Volume Group");
        root.push_value("description", "say \"hi\" C:\\x");
        root.push_value("neg", -5i64);
        root.push_value("f", Value::Float("1.50".into()));
        root.push_value("mixed", vec![Value::Int(1), Value::from("a")]);
        root.push_value("needs quotes", 1i64);
        root.push_value("", 2i64);
        root.push_section("late", Section::new());
        let expected = "vg0 {
id = \"abc\"
seqno = 3

logical_volumes {

lv0 {
status = [\"READ\", \"WRITE\", \"VISIBLE\"]
flags = []

segment1 {
start_extent = 0
extent_count = 4
type = \"striped\"
stripe_count = 2
stripe_size = 128
stripes = [
\"pv0\", 2,
\"pv1\", 0
]
}
}
}
}
contents = \"Text Format Volume Group\"
description = \"say \\\"hi\\\" C:\\\\x\"
neg = -5
f = 1.50
mixed = [1, \"a\"]
\"needs quotes\" = 1
\"\" = 2

late {
}
";
        assert_eq!(emit(&root), expected);
        // single-stripe and odd-length stripes arrays, empty stripes
        let mut s1 = Section::new();
        s1.push_value("stripes", vec![Value::from("pv0"), Value::Int(0)]);
        s1.push_value("x", Section::new().len() as i64);
        assert_eq!(emit(&s1), "stripes = [\n\"pv0\", 0\n]\nx = 0\n");
        let mut s2 = Section::new();
        s2.push_value(
            "stripes",
            vec![Value::from("pv0"), Value::Int(0), Value::from("pv1")],
        );
        assert_eq!(emit(&s2), "stripes = [\n\"pv0\", 0,\n\"pv1\"\n]\n");
        let mut s3 = Section::new();
        s3.push_value("stripes", Value::Array(vec![]));
        assert_eq!(emit(&s3), "stripes = []\n");
        assert_eq!(Value::strings(["a\"b"]).to_string(), r#"["a\"b"]"#);
        assert_eq!(quote(r"a\b"), r#""a\\b""#);
    }

    #[test]
    fn accessors() {
        let t = parse(b"i = 5\nn = -1\nbig = 4294967296\ns = \"x\"\na = [\"p\", \"q\"]\nm = [\"p\", 1]\nsub { }").unwrap();
        assert_eq!(t.int("i"), Some(5));
        assert_eq!(t.int("s"), None);
        assert_eq!(t.int("nope"), None);
        assert_eq!(t.str("s"), Some("x"));
        assert_eq!(t.str("i"), None);
        assert!(t.section("sub").is_some());
        assert!(t.section("i").is_none());
        assert_eq!(t.req_int("i").unwrap(), 5);
        assert_eq!(
            t.req_u32("big").unwrap_err().to_string(),
            "key `big` = 4294967296 is out of range; expected an integer between 0 and 4294967295"
        );
        assert!(matches!(t.req_u64("n"), Err(TextError::OutOfRange { .. })));
        assert_eq!(t.req_u64("big").unwrap(), 1 << 32);
        assert_eq!(
            t.req_int("s").unwrap_err().to_string(),
            "key `s` is a string; expected an integer"
        );
        assert_eq!(
            t.req_int("zz").unwrap_err().to_string(),
            "key `zz` is missing; expected an integer"
        );
        assert_eq!(
            t.req_str("sub").unwrap_err().to_string(),
            "key `sub` is a section; expected a string"
        );
        assert!(matches!(
            t.req_section("a"),
            Err(TextError::WrongType { .. })
        ));
        assert_eq!(t.str_array("a").unwrap(), Some(vec!["p", "q"]));
        assert_eq!(t.str_array("s").unwrap(), Some(vec!["x"]));
        assert_eq!(t.str_array("zz").unwrap(), None);
        assert_eq!(
            t.str_array("m").unwrap_err().to_string(),
            "key `m` is an array holding an integer; expected an array of strings"
        );
        assert!(t.str_array("i").is_err());
        assert!(t.req_int("zz").unwrap_err().line().is_none());

        let mut m = t.clone();
        m.set_value("i", 6i64);
        m.set_value("new", "v");
        m.set_section("sub", sec(vec![("k", int(1))]));
        assert_eq!(m.int("i"), Some(6));
        assert_eq!(m.entries.last().map(|e| e.0.as_str()), Some("new"));
        assert_eq!(m.section("sub").and_then(|s| s.int("k")), Some(1));
        if let Some(sub) = m.section_mut("sub") {
            sub.push_value("k2", 2i64);
        }
        assert_eq!(m.req_section("sub").unwrap().len(), 2);
        assert!(m.remove("i").is_some());
        assert!(!m.contains("i"));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn bare_key() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_+.\\-/!:&\\\\]{1,12}"
        }

        fn any_key() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => bare_key(),
                1 => "[ #={}\\[\\],\"'\\\\a-z\t\n]{1,10}",
                1 => any::<String>().prop_filter("no NUL, non-empty", |s| !s.is_empty() && !s.contains('\0')),
            ]
        }

        fn scalar() -> impl Strategy<Value = Value> {
            prop_oneof![
                any::<i64>().prop_map(Value::Int),
                prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0), Just(-1)].prop_map(Value::Int),
                "[+-]?([0-9]{1,6}\\.[0-9]{0,6}|\\.[0-9]{1,6})".prop_map(Value::Float),
                any::<String>().prop_map(|s| Value::Str(s.replace('\0', ""))),
                "[\"\\\\'#{}\\[\\], a-z\n]{0,12}".prop_map(Value::Str),
            ]
        }

        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![3 => scalar(), 1 => prop::collection::vec(scalar(), 0..6).prop_map(Value::Array)]
        }

        fn unique(entries: Vec<(String, Node)>) -> Section {
            let mut seen = std::collections::HashSet::new();
            Section {
                entries: entries
                    .into_iter()
                    .filter(|(k, _)| seen.insert(k.clone()))
                    .collect(),
            }
        }

        fn tree() -> impl Strategy<Value = Section> {
            let leaf = prop::collection::vec((any_key(), value().prop_map(Node::Value)), 0..6)
                .prop_map(unique);
            leaf.prop_recursive(5, 64, 6, |inner| {
                prop::collection::vec(
                    (
                        prop_oneof![any_key(), Just("stripes".to_string())],
                        prop_oneof![value().prop_map(Node::Value), inner.prop_map(Node::Section)],
                    ),
                    0..6,
                )
                .prop_map(unique)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn emit_parse_round_trip(t in tree()) {
                let text = emit(&t);
                let back = parse(text.as_bytes());
                prop_assert!(back.is_ok(), "{:?}\n{}", back, text);
                let back = back.unwrap_or_default();
                prop_assert_eq!(&back, &t);
                prop_assert_eq!(emit(&back), text);
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                if let Ok(t) = parse(&bytes) {
                    let text = emit(&t);
                    prop_assert_eq!(parse(text.as_bytes()).ok(), Some(t));
                }
            }

            #[test]
            fn token_soup_never_panics(parts in prop::collection::vec(
                prop_oneof![
                    Just("a"), Just("b"), Just("=") , Just("{"), Just("}"), Just("["), Just("]"),
                    Just(","), Just("\""), Just("'"), Just("\\"), Just("#"), Just("\n"), Just(" "),
                    Just("0"), Just("010"), Just("-"), Just("."), Just("9223372036854775808"), Just("\0"),
                    Just("\"s\""), Just("x ="), Just("s {"),
                ], 0..64)) {
                let text: String = parts.concat();
                if let Ok(t) = parse(text.as_bytes()) {
                    prop_assert_eq!(parse(emit(&t).as_bytes()).ok(), Some(t));
                }
            }

            #[test]
            fn mutated_sample_never_panics(
                muts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8)
            ) {
                let mut bytes = super::RAW_SAMPLE.as_bytes().to_vec();
                for (at, byte, op) in muts {
                    if bytes.is_empty() { break; }
                    let i = at.index(bytes.len());
                    match op {
                        0 => bytes[i] = byte,
                        1 => { bytes.remove(i); }
                        _ => bytes.insert(i, byte),
                    }
                }
                if let Ok(t) = parse(&bytes) {
                    let text = emit(&t);
                    prop_assert_eq!(parse(text.as_bytes()).ok(), Some(t));
                }
            }

            #[test]
            fn deep_nesting_is_an_error(n in (MAX_DEPTH + 1)..20_000usize, open in prop_oneof![Just("a {"), Just("\"q\"{"), Just("x{\n")]) {
                let text = open.repeat(n);
                prop_assert!(matches!(parse(text.as_bytes()), Err(TextError::TooDeep { .. })), "not TooDeep");
            }
        }
    }
}
