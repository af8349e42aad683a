//! Source positions: parses the YAML text with yaml-rust2 (which keeps
//! markers, unlike serde_yaml's `Value`) into an index from key path
//! (`routes[2].upstream`) to the 1-based line/column of the key and the value.
//! Also reports YAML syntax errors, duplicate keys and extra documents.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the document root, e.g. `upstreams.app.pool.max_idle`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        KeyPath(v)
    }

    pub fn idx(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }

    pub fn parent(&self) -> Option<Self> {
        let mut v = self.0.clone();
        v.pop()?;
        Some(KeyPath(v))
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };

    /// yaml-rust2 markers have 1-based lines and 0-based columns.
    fn from_marker(m: &Marker) -> Pos {
        Pos {
            line: m.line().max(1),
            col: m.col() + 1,
        }
    }
}

/// Where a node sits: its key (for sequence items, the item itself) and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub key: Pos,
    pub value: Pos,
}

/// A problem found while indexing: syntax errors, duplicate keys, extra documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Marks {
    map: HashMap<KeyPath, Mark>,
}

impl Marks {
    /// Indexes `text`. Returns the syntax error (if any) separately from the
    /// duplicate-key / extra-document problems, which do not stop indexing.
    pub fn parse(text: &str) -> Result<(Marks, Vec<SyntaxError>), SyntaxError> {
        let mut rx = Receiver::default();
        let mut parser = Parser::new_from_str(text);
        // yaml-rust2 asserts internally on impossible parser states; a panic
        // there must still not take the gate down on a bad file.
        let res =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parser.load(&mut rx, true)));
        match res {
            Ok(Ok(())) => Ok((Marks { map: rx.map }, rx.problems)),
            Ok(Err(e)) => Err(SyntaxError {
                pos: Pos::from_marker(e.marker()),
                message: format!("YAML syntax error: {}", e.info()),
            }),
            Err(_) => Err(SyntaxError {
                pos: Pos::START,
                message: "YAML syntax error: the file could not be parsed".to_string(),
            }),
        }
    }

    pub fn get(&self, p: &KeyPath) -> Option<Mark> {
        self.map.get(p).copied()
    }

    /// The value position of `p`, or of its nearest indexed ancestor.
    pub fn value_pos(&self, p: &KeyPath) -> Pos {
        self.nearest(p).map(|m| m.value).unwrap_or(Pos::START)
    }

    /// The key position of `p`, or of its nearest indexed ancestor.
    pub fn key_pos(&self, p: &KeyPath) -> Pos {
        self.nearest(p).map(|m| m.key).unwrap_or(Pos::START)
    }

    fn nearest(&self, p: &KeyPath) -> Option<Mark> {
        let mut cur = p.clone();
        loop {
            if let Some(m) = self.map.get(&cur) {
                return Some(*m);
            }
            cur = cur.parent()?;
        }
    }
}

enum Frame {
    Map {
        path: KeyPath,
        /// The key just read, waiting for its value.
        pending: Option<(String, Pos)>,
        seen: Vec<String>,
    },
    Seq {
        path: KeyPath,
        next: usize,
    },
    /// A complex (non-scalar) key or anything under it: not indexed.
    Skip,
}

#[derive(Default)]
struct Receiver {
    map: HashMap<KeyPath, Mark>,
    stack: Vec<Frame>,
    problems: Vec<SyntaxError>,
    documents: usize,
}

enum Node {
    Scalar(String),
    Map,
    Seq,
    Alias,
}

impl Receiver {
    fn node(&mut self, node: Node, pos: Pos) {
        // Decide where this node lives: Some(path) to index, None to skip.
        let (path, key_pos) = match self.stack.last_mut() {
            None => (Some(KeyPath::root()), pos),
            Some(Frame::Skip) => (None, pos),
            Some(Frame::Seq { path, next }) => {
                let p = path.idx(*next);
                *next += 1;
                (Some(p), pos)
            }
            Some(Frame::Map {
                path,
                pending,
                seen,
            }) => match pending.take() {
                Some((k, kpos)) => (Some(path.key(&k)), kpos),
                None => {
                    // This node is a key. yaml-rust2 marks a block mapping's
                    // start at its first `:`; its first key is where it starts.
                    if seen.is_empty() {
                        if let Some(m) = self.map.get_mut(path) {
                            m.value = m.value.min(pos);
                            m.key = m.key.min(pos);
                        }
                    }
                    match node {
                        Node::Scalar(k) => {
                            if seen.contains(&k) {
                                self.problems.push(SyntaxError {
                                    pos,
                                    message: format!(
                                        "duplicate key `{k}`: remove one of the two entries"
                                    ),
                                });
                            } else {
                                seen.push(k.clone());
                            }
                            *pending = Some((k, pos));
                        }
                        Node::Map | Node::Seq => {
                            *pending = Some((String::from("?"), pos));
                            self.stack.push(Frame::Skip);
                        }
                        Node::Alias => *pending = Some((String::from("*"), pos)),
                    }
                    return;
                }
            },
        };
        if let Some(p) = &path {
            self.map.insert(
                p.clone(),
                Mark {
                    key: key_pos,
                    value: pos,
                },
            );
        }
        match (node, path) {
            (Node::Map, Some(path)) => self.stack.push(Frame::Map {
                path,
                pending: None,
                seen: Vec::new(),
            }),
            (Node::Seq, Some(path)) => self.stack.push(Frame::Seq { path, next: 0 }),
            (Node::Map | Node::Seq, None) => self.stack.push(Frame::Skip),
            _ => {}
        }
    }
}

impl MarkedEventReceiver for Receiver {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from_marker(&mark);
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.problems.push(SyntaxError {
                        pos,
                        message: "only one YAML document is allowed: remove the `---` separator and what follows".to_string(),
                    });
                }
                self.stack.clear();
            }
            _ if self.documents > 1 => {}
            Event::Scalar(s, ..) => self.node(Node::Scalar(s), pos),
            Event::Alias(_) => self.node(Node::Alias, pos),
            Event::MappingStart(..) => self.node(Node::Map, pos),
            Event::SequenceStart(..) => self.node(Node::Seq, pos),
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: usize, col: usize) -> Pos {
        Pos { line, col }
    }

    #[test]
    fn indexes_keys_and_values() {
        let text = "\
threads: 2
upstreams:
  app:
    pool: { max_idle: 8 }
routes:
  - path: /a
    upstream: app
  - path: /b
    rate_limit: [x, y]
";
        let (m, problems) = Marks::parse(text).unwrap();
        assert!(problems.is_empty());
        let root = KeyPath::root();
        assert_eq!(m.get(&root.key("threads")).unwrap().key, p(1, 1));
        assert_eq!(m.get(&root.key("threads")).unwrap().value, p(1, 10));
        let mi = root.key("upstreams").key("app").key("pool").key("max_idle");
        assert_eq!(mi.to_string(), "upstreams.app.pool.max_idle");
        assert_eq!(m.get(&mi).unwrap().key, p(4, 13));
        assert_eq!(m.get(&mi).unwrap().value, p(4, 23));
        let up = root.key("routes").idx(0).key("upstream");
        assert_eq!(up.to_string(), "routes[0].upstream");
        assert_eq!(m.get(&up).unwrap().value, p(7, 15));
        assert_eq!(m.get(&root.key("routes").idx(1)).unwrap().value, p(8, 5));
        let y = root.key("routes").idx(1).key("rate_limit").idx(1);
        assert_eq!(m.get(&y).unwrap().value, p(9, 21));
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(m.value_pos(&y.key("nope")), p(9, 21));
    }

    #[test]
    fn syntax_error_position() {
        let e = Marks::parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(e.message.starts_with("YAML syntax error"), "{}", e.message);
        assert!(e.pos.line >= 2);
        let e = Marks::parse("a: 1\n b: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
    }

    #[test]
    fn duplicates_and_documents() {
        let (_, problems) = Marks::parse("a: 1\nb: 2\na: 3\n---\nc: 1\n").unwrap();
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].pos, p(3, 1));
        assert!(problems[0].message.contains("duplicate key `a`"));
        assert_eq!(problems[1].pos.line, 4);
    }
}
