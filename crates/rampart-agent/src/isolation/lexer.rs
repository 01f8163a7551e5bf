//! Tokens of the exception language. Addresses (IPv6 included), ports, port ranges and
//! keywords are all one kind of token, a *word*: `2001:db8::1` and `1000:2000` both
//! contain colons, and only the parser knows which one it expects.

use super::error::RuleErrorKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// Keyword, address, CIDR, port, range or macro name.
    Word(String),
    /// `"..."` (macro values).
    Str(String),
    /// `$name`.
    Macro(String),
    LBrace,
    RBrace,
    Comma,
    Equals,
    /// `!`, only to explain that negation is not supported.
    Bang,
    /// `<`, `>`: pf's port operators, only to explain they are not supported.
    Op(char),
    Newline,
    /// Where the lexer gave up on a line (its error is already reported); the parser
    /// skips the rest of the statement.
    Bad,
}

impl Tok {
    /// How the token is named in an error message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("\"{w}\""),
            Tok::Str(s) => format!("string \"{s}\""),
            Tok::Macro(m) => format!("${m}"),
            Tok::LBrace => "\"{\"".into(),
            Tok::RBrace => "\"}\"".into(),
            Tok::Comma => "\",\"".into(),
            Tok::Equals => "\"=\"".into(),
            Tok::Bang => "\"!\"".into(),
            Tok::Op(c) => format!("\"{c}\""),
            Tok::Newline => "end of line".into(),
            Tok::Bad => "an invalid token".into(),
        }
    }
}

/// A token and where it starts (1-based line and column, counted in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned {
    pub tok: Tok,
    pub line: usize,
    pub col: usize,
}

/// A lexing error and where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexError {
    pub line: usize,
    pub col: usize,
    pub kind: RuleErrorKind,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-')
}

/// Split `text` into tokens. `line`/`col` is where `text` starts in its file, so a
/// macro's value, lexed on its own, keeps the positions of its definition. After an
/// error the rest of that line becomes one [`Tok::Bad`], so every line is still seen.
pub fn lex(text: &str, line: usize, col: usize) -> (Vec<Spanned>, Vec<LexError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut col) = (line, col);
    while let Some(&c) = chars.peek() {
        let (start_line, start_col) = (line, col);
        let push = |out: &mut Vec<Spanned>, tok| {
            out.push(Spanned {
                tok,
                line: start_line,
                col: start_col,
            })
        };
        match c {
            '\n' => {
                chars.next();
                push(&mut out, Tok::Newline);
                line += 1;
                col = 1;
            }
            c if c.is_whitespace() => {
                chars.next();
                col += 1;
            }
            '#' => {
                // A comment runs to the end of the line; the newline stays a token.
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                    col += 1;
                }
            }
            '\\' => {
                // Line continuation: a backslash, optional blanks, then the newline.
                chars.next();
                col += 1;
                while chars
                    .peek()
                    .is_some_and(|&c| c != '\n' && c.is_whitespace())
                {
                    chars.next();
                    col += 1;
                }
                match chars.peek() {
                    Some('\n') => {
                        chars.next();
                        line += 1;
                        col = 1;
                    }
                    None => {}
                    Some(_) => {
                        fail(
                            &mut errors,
                            &mut out,
                            start_line,
                            start_col,
                            RuleErrorKind::UnexpectedChar('\\'),
                        );
                        skip_line(&mut chars, &mut col);
                        continue;
                    }
                }
            }
            '"' => {
                chars.next();
                col += 1;
                let mut value = String::new();
                let mut closed = false;
                // Peek, not next: an unterminated string must leave its newline in place.
                while let Some(&c) = chars.peek().filter(|c| **c != '\n') {
                    chars.next();
                    col += 1;
                    if c == '"' {
                        closed = true;
                        break;
                    }
                    value.push(c);
                }
                if !closed {
                    fail(
                        &mut errors,
                        &mut out,
                        start_line,
                        start_col,
                        RuleErrorKind::UnterminatedString,
                    );
                    continue;
                }
                push(&mut out, Tok::Str(value));
            }
            '$' => {
                chars.next();
                col += 1;
                let mut name = String::new();
                while let Some(&c) = chars
                    .peek()
                    .filter(|c| c.is_ascii_alphanumeric() || **c == '_')
                {
                    name.push(c);
                    chars.next();
                    col += 1;
                }
                if name.is_empty() {
                    fail(
                        &mut errors,
                        &mut out,
                        start_line,
                        start_col,
                        RuleErrorKind::UnexpectedChar('$'),
                    );
                    skip_line(&mut chars, &mut col);
                    continue;
                }
                push(&mut out, Tok::Macro(name));
            }
            '{' | '}' | ',' | '=' | '!' | '<' | '>' => {
                chars.next();
                col += 1;
                let tok = match c {
                    '{' => Tok::LBrace,
                    '}' => Tok::RBrace,
                    ',' => Tok::Comma,
                    '=' => Tok::Equals,
                    '!' => Tok::Bang,
                    other => Tok::Op(other),
                };
                push(&mut out, tok);
            }
            c if is_word_char(c) => {
                let mut word = String::new();
                while let Some(&c) = chars.peek().filter(|c| is_word_char(**c)) {
                    word.push(c);
                    chars.next();
                    col += 1;
                }
                push(&mut out, Tok::Word(word));
            }
            other => {
                fail(
                    &mut errors,
                    &mut out,
                    start_line,
                    start_col,
                    RuleErrorKind::UnexpectedChar(other),
                );
                skip_line(&mut chars, &mut col);
                continue;
            }
        }
    }
    (out, errors)
}

fn fail(
    errors: &mut Vec<LexError>,
    out: &mut Vec<Spanned>,
    line: usize,
    col: usize,
    kind: RuleErrorKind,
) {
    errors.push(LexError { line, col, kind });
    out.push(Spanned {
        tok: Tok::Bad,
        line,
        col,
    });
}

/// Skip to (not past) the end of the line, so the newline still ends the statement.
fn skip_line(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, col: &mut usize) {
    while chars.peek().is_some_and(|&c| c != '\n') {
        chars.next();
        *col += 1;
    }
}
