//! Structured Field Values (RFC 8941): the Dictionary parser that
//! targeted cache-control fields need (RFC 9213 §2.2).
//!
//! Only what the policy reads is kept of a value: Integers, Strings and
//! Tokens (as text), Booleans, and the items of Inner Lists. Decimals and
//! Byte Sequences are checked and kept as markers; Parameters are checked
//! and dropped (RFC 9213 §2.2: "Parameters received on directives are to
//! be ignored"). A parsing error anywhere makes the whole field invalid,
//! as RFC 8941 §4.2 asks.

/// A Bare Item (RFC 8941 §3.3).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bare {
    /// An Integer (at most 15 digits).
    Integer(i64),
    /// A Decimal; its value is not needed.
    Decimal,
    /// A String, escapes removed.
    String(String),
    /// A Token.
    Token(String),
    /// A Byte Sequence; its value is not needed.
    ByteSequence,
    /// A Boolean (`?1` / `?0`; a key without a value is `true`).
    Boolean(bool),
}

/// A Dictionary member's value: an Item or an Inner List.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Member {
    /// One Bare Item (its Parameters dropped).
    Item(Bare),
    /// An Inner List's items (their Parameters dropped).
    InnerList(Vec<Bare>),
}

/// Parses a Dictionary (RFC 8941 §4.2.2): its members in order of first
/// appearance, a repeated key keeping its last value; `None` on any
/// parsing error. An empty (or all-space) input is an empty Dictionary.
pub(crate) fn parse_dictionary(input: &str) -> Option<Vec<(String, Member)>> {
    let mut p = Parser {
        s: input.as_bytes(),
        i: 0,
    };
    p.skip_sp();
    let dict = p.dictionary()?;
    p.skip_sp();
    p.done().then_some(dict)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    /// Consumes `c` when it is next.
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip_sp(&mut self) {
        while self.eat(b' ') {}
    }

    /// Optional whitespace: SP or HTAB.
    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn dictionary(&mut self) -> Option<Vec<(String, Member)>> {
        let mut dict: Vec<(String, Member)> = Vec::new();
        while !self.done() {
            let key = self.key()?;
            let member = if self.eat(b'=') {
                self.item_or_inner_list()?
            } else {
                self.parameters()?;
                Member::Item(Bare::Boolean(true))
            };
            match dict.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = member,
                None => dict.push((key, member)),
            }
            self.skip_ows();
            if self.done() {
                break;
            }
            if !self.eat(b',') {
                return None;
            }
            self.skip_ows();
            if self.done() {
                // A trailing comma.
                return None;
            }
        }
        Some(dict)
    }

    fn item_or_inner_list(&mut self) -> Option<Member> {
        if self.eat(b'(') {
            return self.inner_list();
        }
        let item = self.bare_item()?;
        self.parameters()?;
        Some(Member::Item(item))
    }

    /// After the opening parenthesis (RFC 8941 §4.2.1.2).
    fn inner_list(&mut self) -> Option<Member> {
        let mut items = Vec::new();
        loop {
            self.skip_sp();
            if self.eat(b')') {
                self.parameters()?;
                return Some(Member::InnerList(items));
            }
            items.push(self.bare_item()?);
            self.parameters()?;
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return None;
            }
        }
    }

    /// Parameters (RFC 8941 §4.2.3.2), checked and dropped.
    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.skip_sp();
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }

    /// A key (RFC 8941 §4.2.3.3): lowercase only.
    fn key(&mut self) -> Option<String> {
        let start = self.i;
        match self.peek()? {
            b'a'..=b'z' | b'*' => self.i += 1,
            _ => return None,
        }
        while matches!(
            self.peek(),
            Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*')
        ) {
            self.i += 1;
        }
        Some(self.text(start))
    }

    fn text(&self, start: usize) -> String {
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    fn bare_item(&mut self) -> Option<Bare> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string(),
            b':' => self.byte_sequence(),
            b'?' => self.boolean(),
            c if c.is_ascii_alphabetic() || c == b'*' => Some(self.token()),
            _ => None,
        }
    }

    /// An Integer or a Decimal (RFC 8941 §4.2.4).
    fn number(&mut self) -> Option<Bare> {
        let negative = self.eat(b'-');
        let start = self.i;
        let mut decimal = false;
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return None;
        }
        while let Some(c) = self.peek() {
            let len = self.i - start;
            match c {
                b'0'..=b'9' => self.i += 1,
                b'.' if !decimal => {
                    if len > 12 {
                        return None;
                    }
                    decimal = true;
                    self.i += 1;
                }
                _ => break,
            }
            let len = self.i - start;
            if (!decimal && len > 15) || (decimal && len > 16) {
                return None;
            }
        }
        let digits = &self.s[start..self.i];
        if decimal {
            let fraction = digits.len() - 1 - digits.iter().position(|&b| b == b'.')?;
            return (1..=3).contains(&fraction).then_some(Bare::Decimal);
        }
        let n: i64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
        Some(Bare::Integer(if negative { -n } else { n }))
    }

    /// A String (RFC 8941 §4.2.5): printable ASCII, `\"` and `\\` escapes.
    fn string(&mut self) -> Option<Bare> {
        self.i += 1;
        let mut out = String::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'\\' => match self.peek()? {
                    e @ (b'"' | b'\\') => {
                        self.i += 1;
                        out.push(char::from(e));
                    }
                    _ => return None,
                },
                b'"' => return Some(Bare::String(out)),
                0x20..=0x7e => out.push(char::from(c)),
                _ => return None,
            }
        }
    }

    /// A Token (RFC 8941 §4.2.6): the first character was checked.
    fn token(&mut self) -> Bare {
        let start = self.i;
        self.i += 1;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c))
        {
            self.i += 1;
        }
        Bare::Token(self.text(start))
    }

    /// A Byte Sequence (RFC 8941 §4.2.7): base64 between colons.
    fn byte_sequence(&mut self) -> Option<Bare> {
        self.i += 1;
        loop {
            match self.peek()? {
                b':' => {
                    self.i += 1;
                    return Some(Bare::ByteSequence);
                }
                c if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=') => self.i += 1,
                _ => return None,
            }
        }
    }

    /// A Boolean (RFC 8941 §4.2.8): `?1` or `?0`.
    fn boolean(&mut self) -> Option<Bare> {
        self.i += 1;
        let v = match self.peek()? {
            b'1' => true,
            b'0' => false,
            _ => return None,
        };
        self.i += 1;
        Some(Bare::Boolean(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(s: &str) -> Option<Vec<(String, Member)>> {
        parse_dictionary(s)
    }

    fn item(b: Bare) -> Member {
        Member::Item(b)
    }

    #[test]
    fn members_of_every_type() {
        let d =
            dict(r#"a=1, b=-2, c=1.5, d="x \"y\" \\", e=tok/en:1, f=:aGk=:, g=?0, h, i=(1 "s" t)"#)
                .unwrap();
        let want = [
            ("a", item(Bare::Integer(1))),
            ("b", item(Bare::Integer(-2))),
            ("c", item(Bare::Decimal)),
            ("d", item(Bare::String(r#"x "y" \"#.into()))),
            ("e", item(Bare::Token("tok/en:1".into()))),
            ("f", item(Bare::ByteSequence)),
            ("g", item(Bare::Boolean(false))),
            ("h", item(Bare::Boolean(true))),
            (
                "i",
                Member::InnerList(vec![
                    Bare::Integer(1),
                    Bare::String("s".into()),
                    Bare::Token("t".into()),
                ]),
            ),
        ];
        assert_eq!(d.len(), want.len());
        for ((k, v), (wk, wv)) in d.iter().zip(want) {
            assert_eq!((k.as_str(), v), (wk, &wv));
        }
    }

    #[test]
    fn parameters_are_checked_and_dropped() {
        let d = dict("max-age=60;foo=bar;x, no-store;a=?1, l=(1;p=2 2);q").unwrap();
        assert_eq!(d[0], ("max-age".into(), item(Bare::Integer(60))));
        assert_eq!(d[1], ("no-store".into(), item(Bare::Boolean(true))));
        assert_eq!(
            d[2],
            (
                "l".into(),
                Member::InnerList(vec![Bare::Integer(1), Bare::Integer(2)])
            )
        );
        assert_eq!(dict("a;B=1"), None, "uppercase parameter key");
        assert_eq!(dict("a;=1"), None);
        assert_eq!(dict("a=1;p=@"), None);
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        let d = dict("max-age=10, no-store, max-age=20").unwrap();
        assert_eq!(
            d,
            vec![
                ("max-age".into(), item(Bare::Integer(20))),
                ("no-store".into(), item(Bare::Boolean(true))),
            ]
        );
    }

    #[test]
    fn whitespace() {
        assert!(dict("").unwrap().is_empty());
        assert!(dict("   ").unwrap().is_empty());
        assert_eq!(dict("  a=1 ,\tb=2  ").unwrap().len(), 2);
        assert_eq!(dict("a=( 1  2 )").unwrap().len(), 1);
        // Leading HTAB is not SP; no space around `=`.
        assert_eq!(dict("\ta=1"), None);
        assert_eq!(dict("a =1"), None);
        assert_eq!(dict("a= 1"), None);
        assert_eq!(dict("a=(1\t2)"), None);
    }

    #[test]
    fn invalid_dictionaries() {
        for bad in [
            "Max-Age=60",          // keys are lowercase
            "max-age=60,",         // trailing comma
            ",max-age=60",         // leading comma
            "max-age=60,,a",       // empty member
            "max-age=60 no-store", // no comma
            "1a=1",                // key starting with a digit
            "a=",                  // no value
            "a=1234567890123456",  // 16-digit integer
            "a=1.2345",            // four fraction digits
            "a=1234567890123.1",   // 13 integer digits in a decimal
            "a=1.",                // no fraction digit
            "a=-",                 // sign only
            "a=\"open",            // unterminated string
            "a=\"\\n\"",           // bad escape
            "a=:abc",              // unterminated byte sequence
            "a=:a$b:",             // bad base64 character
            "a=?2",                // bad boolean
            "a=?",                 // empty boolean
            "a=(1 2",              // unterminated inner list
            "a=(1,2)",             // inner list items are space-separated
            "a=@1",                // not a bare item (RFC 8941)
            "a=1)",                // junk after a member
            "max-age=\"60\" x",    // junk after a member
        ] {
            assert_eq!(dict(bad), None, "{bad:?} parsed");
        }
    }

    /// Every prefix of a value, and every one-byte change of it, parses or
    /// fails without panicking.
    #[test]
    fn never_panics_on_prefixes_and_mutations() {
        let full = r#"a=1, b=-2.5;p="x\"y", c=(tok/1 :aGk=: ?1);q, *d=?0,e"#;
        assert_eq!(dict(full).unwrap().len(), 5);
        for end in 0..=full.len() {
            let _ = dict(&full[..end]);
        }
        let bytes = full.as_bytes();
        for i in 0..bytes.len() {
            for b in [
                b' ', b',', b';', b'(', b')', b'"', b'\\', b'=', b'?', b'-', b'.', b'9', b'A',
            ] {
                let mut m = bytes.to_vec();
                m[i] = b;
                let _ = dict(&String::from_utf8(m).unwrap());
            }
        }
    }

    #[test]
    fn limits() {
        assert_eq!(
            dict("a=999999999999999").unwrap()[0].1,
            item(Bare::Integer(999_999_999_999_999))
        );
        assert_eq!(
            dict("a=-999999999999999").unwrap()[0].1,
            item(Bare::Integer(-999_999_999_999_999))
        );
        assert_eq!(
            dict("a=123456789012.123").unwrap()[0].1,
            item(Bare::Decimal)
        );
        assert_eq!(dict("*a=1").unwrap()[0].0, "*a");
    }
}
