//! Patterns of `Action`, `Resource` and condition values: `*` and `?`
//! wildcards, and policy variables whose values are taken literally.

use super::Request;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `*`: any run of characters, empty included.
    Star,
    /// `?`: any one character.
    One,
}

#[derive(Debug, Clone)]
pub(super) struct Pattern(Vec<Token>);

impl Pattern {
    /// `*` and `?` as wildcards, nothing else special (actions).
    pub(super) fn literal_wildcards(text: &str) -> Pattern {
        Pattern(text.chars().map(wildcard).collect())
    }

    /// With each `${key}` replaced by the request's one value of `key`,
    /// literally (`${*}`, `${?}`, `${$}` are the escapes for those
    /// characters). `None` when a key has no single value: the element then
    /// matches nothing, as in IAM.
    pub(super) fn with_variables(text: &str, request: &Request) -> Option<Pattern> {
        let mut tokens = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            tokens.extend(rest[..start].chars().map(wildcard));
            let end = rest[start..]
                .find('}')
                .unwrap_or_else(|| panic!("unclosed policy variable in {text}"));
            let key = &rest[start + 2..start + end];
            match key {
                "*" | "?" | "$" => tokens.push(Token::Char(key.chars().next().unwrap())),
                _ => {
                    assert!(
                        !key.contains(',') && !key.contains('\''),
                        "unsupported policy variable ${{{key}}} (default values)"
                    );
                    let [value] = request.values(key)? else {
                        return None;
                    };
                    tokens.extend(value.chars().map(Token::Char));
                }
            }
            rest = &rest[start + end + 1..];
        }
        tokens.extend(rest.chars().map(wildcard));
        Some(Pattern(tokens))
    }

    /// StringEquals: no wildcards, `*` is a `*`.
    pub(super) fn equals(&self, value: &str, ignore_case: bool) -> bool {
        let text: String = self
            .0
            .iter()
            .map(|t| match t {
                Token::Char(c) => *c,
                Token::Star => '*',
                Token::One => '?',
            })
            .collect();
        match ignore_case {
            true => text.to_lowercase() == value.to_lowercase(),
            false => text == value,
        }
    }

    /// StringLike, actions: the whole value against the wildcards.
    pub(super) fn matches(&self, value: &str) -> bool {
        glob(&self.0, &value.chars().collect::<Vec<_>>())
    }

    /// Resources and ArnLike: each of an ARN's six colon-separated parts
    /// on its own, so that a `*` never spans a colon into the next part
    /// (the last part, the resource, may hold colons). A pattern that is
    /// not an ARN (`*`) is matched whole.
    pub(super) fn matches_arn(&self, value: &str) -> bool {
        if !self
            .0
            .starts_with(&[Token::Char('a'), Token::Char('r'), Token::Char('n')])
        {
            return self.matches(value);
        }
        let parts: Vec<&[Token]> = self.0.splitn(6, |t| *t == Token::Char(':')).collect();
        let values: Vec<&str> = value.splitn(6, ':').collect();
        parts.len() == 6
            && values.len() == 6
            && parts
                .iter()
                .zip(&values)
                .all(|(p, v)| glob(p, &v.chars().collect::<Vec<_>>()))
    }
}

fn wildcard(c: char) -> Token {
    match c {
        '*' => Token::Star,
        '?' => Token::One,
        c => Token::Char(c),
    }
}

/// Wildcard matching by dynamic programming over (pattern, value) prefixes.
fn glob(pattern: &[Token], value: &[char]) -> bool {
    // matched[j]: the pattern so far matches value[..j].
    let mut matched = vec![false; value.len() + 1];
    matched[0] = true;
    for token in pattern {
        let mut next = vec![false; value.len() + 1];
        for j in 0..=value.len() {
            next[j] = match token {
                Token::Star => matched[j] || (j > 0 && next[j - 1]),
                Token::One => j > 0 && matched[j - 1],
                Token::Char(c) => j > 0 && matched[j - 1] && value[j - 1] == *c,
            };
        }
        matched = next;
    }
    matched[value.len()]
}
