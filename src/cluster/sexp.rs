//! The text S-expressions the cluster config is written in: a deliberately small subset.
//!
//! The config is written and reviewed by people, so it is *text* (whitespace, comments, line
//! breaks), not the canonical csexp Dune uses for metadata. We read our own subset instead of a
//! general sexp library because the subset is tiny and because we want three things a general
//! reader does not give us together:
//!
//! - every error names its `line:column`, so a typo in a 40-node config is found at once;
//! - bounds: callers refuse big inputs, and lists may nest at most [`MAX_DEPTH`] deep, so a
//!   corrupted or hostile file costs nothing;
//! - every value keeps the position it came from, so *semantic* errors (an unknown field, an
//!   overlapping range) can point at the exact place too.
//!
//! The subset: atoms separated by whitespace, `(` and `)`, `;` comments to the end of the line,
//! and double-quoted atoms (for URLs or paths with spaces) whose only escapes are `\"` and `\\`.
//! A quoted atom must end on the line it starts on, so a missing quote is reported where it is
//! rather than swallowing the rest of the file.

use std::fmt;

/// How deep lists may nest. The config needs three levels; the limit only keeps a corrupted
/// file from costing more than it should.
pub const MAX_DEPTH: usize = 16;

/// A place in the config text: 1-based line, and 1-based column counted in characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Pos {
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1, in characters (a tab counts as one).
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why the text is not a well-formed S-expression; every case names where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyntaxError {
    /// A quoted atom that does not end on its line; `pos` is its opening quote.
    #[error("{pos}: unterminated string (a quoted atom must end on the line it starts on)")]
    UnterminatedString {
        /// Where the opening `"` is.
        pos: Pos,
    },
    /// A `(` that is never closed before the end of the text.
    #[error("{pos}: unterminated list: this `(` is never closed")]
    UnterminatedList {
        /// Where the unclosed `(` is (the outermost one, when several are open).
        pos: Pos,
    },
    /// A `)` with no open list to close.
    #[error("{pos}: unexpected `)` with no `(` to close")]
    UnexpectedClose {
        /// Where the stray `)` is.
        pos: Pos,
    },
    /// Lists nested deeper than [`MAX_DEPTH`].
    #[error("{pos}: lists nest deeper than {limit} levels")]
    TooDeep {
        /// Where the `(` that went over the limit is.
        pos: Pos,
        /// The limit.
        limit: usize,
    },
    /// A backslash in a quoted atom followed by anything but `"` or `\`.
    #[error("{pos}: unknown escape `\\{found}` in a quoted atom (only \\\" and \\\\ are allowed)")]
    BadEscape {
        /// Where the backslash is.
        pos: Pos,
        /// The character after it.
        found: char,
    },
}

/// One S-expression, with the position it starts at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sexp {
    /// An atom: a bare word or a quoted string, already unescaped.
    Atom {
        /// The atom's text.
        text: String,
        /// Where it starts.
        pos: Pos,
    },
    /// A parenthesised list.
    List {
        /// The list's elements.
        items: Vec<Sexp>,
        /// Where its `(` is.
        pos: Pos,
    },
}

impl Sexp {
    /// Where this expression starts.
    pub fn pos(&self) -> Pos {
        match self {
            Sexp::Atom { pos, .. } | Sexp::List { pos, .. } => *pos,
        }
    }

    /// The text of an atom, `None` for a list.
    pub fn as_atom(&self) -> Option<&str> {
        match self {
            Sexp::Atom { text, .. } => Some(text),
            Sexp::List { .. } => None,
        }
    }

    /// The elements of a list, `None` for an atom.
    pub fn as_list(&self) -> Option<&[Sexp]> {
        match self {
            Sexp::Atom { .. } => None,
            Sexp::List { items, .. } => Some(items),
        }
    }

    /// The expression written back as text, cut to about `limit` characters: for quoting what
    /// was found in an error message without letting a huge form flood it.
    pub fn abbreviated(&self, limit: usize) -> String {
        let full = self.to_string();
        if full.chars().count() <= limit {
            full
        } else {
            let mut cut: String = full.chars().take(limit).collect();
            cut.push('…');
            cut
        }
    }
}

impl fmt::Display for Sexp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sexp::Atom { text, .. } if !text.is_empty() && text.chars().all(is_bare) => {
                f.write_str(text)
            }
            Sexp::Atom { text, .. } => {
                f.write_str("\"")?;
                for c in text.chars() {
                    if c == '"' || c == '\\' {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("\"")
            }
            Sexp::List { items, .. } => {
                f.write_str("(")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// Whether `c` may appear in a bare (unquoted) atom.
fn is_bare(c: char) -> bool {
    !(c.is_whitespace() || matches!(c, '(' | ')' | ';' | '"'))
}

/// Reads every top-level expression of `text`, in order.
pub fn parse(text: &str) -> Result<Vec<Sexp>, SyntaxError> {
    let mut cursor = Cursor::new(text);
    let mut top = Vec::new();
    // The lists being read, innermost last: where each opened, and what it holds so far.
    let mut open: Vec<(Pos, Vec<Sexp>)> = Vec::new();
    while let Some((start, c, pos)) = cursor.next() {
        let done = match c {
            ';' => {
                cursor.skip_line();
                continue;
            }
            '(' => {
                if open.len() == MAX_DEPTH {
                    return Err(SyntaxError::TooDeep {
                        pos,
                        limit: MAX_DEPTH,
                    });
                }
                open.push((pos, Vec::new()));
                continue;
            }
            ')' => {
                let (pos, items) = open.pop().ok_or(SyntaxError::UnexpectedClose { pos })?;
                Sexp::List { items, pos }
            }
            '"' => Sexp::Atom {
                text: cursor.quoted(pos)?,
                pos,
            },
            c if c.is_whitespace() => continue,
            _ => Sexp::Atom {
                text: cursor.bare(start).to_owned(),
                pos,
            },
        };
        match open.last_mut() {
            Some((_, items)) => items.push(done),
            None => top.push(done),
        }
    }
    match open.first() {
        Some((pos, _)) => Err(SyntaxError::UnterminatedList { pos: *pos }),
        None => Ok(top),
    }
}

/// Walks the text one character at a time, keeping the line and column.
struct Cursor<'a> {
    text: &'a str,
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    line: usize,
    column: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Cursor<'a> {
        Cursor {
            text,
            chars: text.char_indices().peekable(),
            line: 1,
            column: 1,
        }
    }

    /// The next character, with its byte offset and position.
    fn next(&mut self) -> Option<(usize, char, Pos)> {
        let (offset, c) = self.chars.next()?;
        let pos = Pos {
            line: self.line,
            column: self.column,
        };
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some((offset, c, pos))
    }

    /// Skips to the end of the line (the newline itself is left for the caller, as whitespace).
    fn skip_line(&mut self) {
        while self.chars.peek().is_some_and(|&(_, c)| c != '\n') {
            self.next();
        }
    }

    /// The rest of a bare atom whose first character was at byte `start`.
    fn bare(&mut self, start: usize) -> &'a str {
        while self.chars.peek().is_some_and(|&(_, c)| is_bare(c)) {
            self.next();
        }
        let end = self.chars.peek().map_or(self.text.len(), |&(i, _)| i);
        &self.text[start..end]
    }

    /// The rest of a quoted atom whose opening quote was at `open`, unescaped.
    fn quoted(&mut self, open: Pos) -> Result<String, SyntaxError> {
        let mut out = String::new();
        loop {
            match self.next() {
                Some((_, '"', _)) => return Ok(out),
                Some((_, '\\', pos)) => match self.next() {
                    Some((_, c @ ('"' | '\\'), _)) => out.push(c),
                    Some((_, '\n', _)) | None => {
                        return Err(SyntaxError::UnterminatedString { pos: open })
                    }
                    Some((_, found, _)) => return Err(SyntaxError::BadEscape { pos, found }),
                },
                Some((_, '\n', _)) | None => {
                    return Err(SyntaxError::UnterminatedString { pos: open })
                }
                Some((_, c, _)) => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Pos {
        Pos { line, column }
    }

    #[test]
    fn atoms_lists_comments_and_positions() {
        let text = "; header\n(lang x 1.0) ; trailing\n  (a (b \"c d\"))\n";
        let forms = parse(text).unwrap();
        assert_eq!(forms.len(), 2);
        assert_eq!(forms[0].to_string(), "(lang x 1.0)");
        assert_eq!(forms[0].pos(), at(2, 1));
        assert_eq!(forms[1].to_string(), "(a (b \"c d\"))");
        let inner = forms[1].as_list().unwrap();
        assert_eq!(inner[0].pos(), at(3, 4));
        let b = inner[1].as_list().unwrap();
        assert_eq!(b[1].as_atom(), Some("c d"));
        assert_eq!(b[1].pos(), at(3, 9));
    }

    #[test]
    fn quoted_escapes() {
        let forms = parse(r#"("a \"q\" b\\c" "" x"y")"#).unwrap();
        let items = forms[0].as_list().unwrap();
        assert_eq!(items[0].as_atom(), Some(r#"a "q" b\c"#));
        assert_eq!(items[1].as_atom(), Some(""));
        // A quote ends a bare atom and starts a quoted one.
        assert_eq!(items[2].as_atom(), Some("x"));
        assert_eq!(items[3].as_atom(), Some("y"));
        assert_eq!(forms[0].to_string(), r#"("a \"q\" b\\c" "" x y)"#);
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let cases = [
            (
                "(a \"b)\n",
                SyntaxError::UnterminatedString { pos: at(1, 4) },
            ),
            (
                "(a\n \"b\\",
                SyntaxError::UnterminatedString { pos: at(2, 2) },
            ),
            (
                "(a\n  (b c)\n",
                SyntaxError::UnterminatedList { pos: at(1, 1) },
            ),
            ("(a))", SyntaxError::UnexpectedClose { pos: at(1, 4) }),
            (
                "(a \"x\\n\")",
                SyntaxError::BadEscape {
                    pos: at(1, 6),
                    found: 'n',
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).unwrap_err(), want, "{text:?}");
        }
        assert_eq!(
            SyntaxError::UnterminatedList { pos: at(3, 7) }.to_string(),
            "3:7: unterminated list: this `(` is never closed"
        );
    }

    #[test]
    fn depth_is_bounded() {
        let ok = "(".repeat(MAX_DEPTH) + &")".repeat(MAX_DEPTH);
        assert!(parse(&ok).is_ok());
        let deep = "(".repeat(MAX_DEPTH + 1) + &")".repeat(MAX_DEPTH + 1);
        assert_eq!(
            parse(&deep).unwrap_err(),
            SyntaxError::TooDeep {
                pos: at(1, MAX_DEPTH + 1),
                limit: MAX_DEPTH
            }
        );
    }

    #[test]
    fn abbreviation_cuts_long_forms() {
        let forms = parse(&format!("({})", "x ".repeat(100))).unwrap();
        let short = forms[0].abbreviated(20);
        assert_eq!(short.chars().count(), 21);
        assert!(short.ends_with('…'));
        assert_eq!(forms[0].abbreviated(1000), forms[0].to_string());
    }
}
