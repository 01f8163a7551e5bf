//! Tokens of the query language, each with the 1-based column where it starts.

use super::QueryError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    /// An unquoted word: a field name, keyword or bare value.
    Word(String),
    /// A value in single or double quotes (backslash escapes the quote and itself).
    Quoted(String),
    LParen,
    RParen,
    Comma,
    /// `=`, `==`, `!=`, `<`, `>`, `<=`, `>=`.
    Symbol(&'static str),
}

#[derive(Clone, Debug)]
pub struct Token {
    pub tok: Tok,
    pub column: usize,
}

/// Characters that end a bare word.
fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | ',' | '=' | '!' | '<' | '>' | '"' | '\'')
}

pub fn tokenize(input: &str) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<char> = input.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let (tok, next) = match c {
            '(' => (Tok::LParen, i + 1),
            ')' => (Tok::RParen, i + 1),
            ',' => (Tok::Comma, i + 1),
            '=' if chars.get(i + 1) == Some(&'=') => (Tok::Symbol("="), i + 2),
            '=' => (Tok::Symbol("="), i + 1),
            '!' if chars.get(i + 1) == Some(&'=') => (Tok::Symbol("!="), i + 2),
            '!' => {
                return Err(QueryError::new(
                    column,
                    "expected `!=` (use `not` to negate)",
                ))
            }
            '<' if chars.get(i + 1) == Some(&'=') => (Tok::Symbol("<="), i + 2),
            '<' => (Tok::Symbol("<"), i + 1),
            '>' if chars.get(i + 1) == Some(&'=') => (Tok::Symbol(">="), i + 2),
            '>' => (Tok::Symbol(">"), i + 1),
            '"' | '\'' => {
                let (text, next) = quoted(&chars, i)?;
                (Tok::Quoted(text), next)
            }
            _ => {
                let start = i;
                let mut j = i;
                while j < chars.len() && !is_delimiter(chars[j]) {
                    j += 1;
                }
                (Tok::Word(chars[start..j].iter().collect()), j)
            }
        };
        out.push(Token { tok, column });
        i = next;
    }
    Ok(out)
}

fn quoted(chars: &[char], start: usize) -> Result<(String, usize), QueryError> {
    let quote = chars[start];
    let mut text = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if i + 1 < chars.len() => {
                text.push(chars[i + 1]);
                i += 2;
            }
            c if c == quote => return Ok((text, i + 1)),
            c => {
                text.push(c);
                i += 1;
            }
        }
    }
    Err(QueryError::new(
        start + 1,
        format!("unterminated quoted value (missing closing {quote})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_symbols_and_quotes_carry_their_columns() {
        let toks = tokenize(r#"user != "a b" and x>=3"#).unwrap();
        let cols: Vec<usize> = toks.iter().map(|t| t.column).collect();
        assert_eq!(cols, vec![1, 6, 9, 15, 19, 20, 22]);
        assert_eq!(toks[2].tok, Tok::Quoted("a b".into()));
        assert_eq!(toks[5].tok, Tok::Symbol(">="));
    }

    #[test]
    fn escaped_quote_stays_inside_the_value() {
        let toks = tokenize(r#"url = "a\"b""#).unwrap();
        assert_eq!(toks[2].tok, Tok::Quoted("a\"b".into()));
    }

    #[test]
    fn unterminated_quote_points_at_the_opening_quote() {
        let err = tokenize("host = 'abc").unwrap_err();
        assert_eq!(err.column, 8);
    }
}
