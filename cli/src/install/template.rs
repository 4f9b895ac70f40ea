//! The Go template language, as far as strait's chart uses it: text and `{{ }}` actions with
//! whitespace trimming, comments, pipelines, variables, parenthesised commands, and the
//! `if`/`else`/`with`/`range`/`define`/`template` structures. Parsing only: `render` runs the trees.

use std::collections::BTreeMap;
use std::rc::Rc;

/// A template that cannot be parsed: where, and what was wrong.
#[derive(Debug, thiserror::Error)]
#[error("{template}:{line}: {message}")]
pub struct ParseError {
    pub template: String,
    pub line: usize,
    pub message: String,
}

/// A part of a parsed template.
#[derive(Debug)]
pub enum Node {
    Text(String),
    /// `{{ pipeline }}`: printed, unless it declares or assigns a variable.
    Action {
        line: usize,
        pipe: Pipeline,
    },
    If(Branch),
    With(Branch),
    Range(Branch),
    /// `{{ template "name" pipeline }}`.
    Template {
        line: usize,
        name: String,
        pipe: Option<Pipeline>,
    },
}

/// The parts of `if`, `with` and `range`: the pipeline tested, the body, and what `else` holds.
#[derive(Debug)]
pub struct Branch {
    pub line: usize,
    pub pipe: Pipeline,
    pub body: Vec<Node>,
    pub otherwise: Vec<Node>,
}

/// Commands joined by `|`, each one's value the last argument of the next, maybe kept in
/// variables.
#[derive(Debug)]
pub struct Pipeline {
    pub declare: Vec<String>,
    /// `=` (the variable exists) rather than `:=`.
    pub assign: bool,
    pub commands: Vec<Vec<Operand>>,
}

/// One word of a command.
#[derive(Debug, Clone)]
pub enum Operand {
    /// `.a.b` (no names: the dot itself).
    Field(Vec<String>),
    /// `$name.a.b` (`$` alone is the data the template was given).
    Variable(String, Vec<String>),
    /// A function's name (or `true`, `false`, `nil`).
    Identifier(String),
    String(String),
    Integer(i64),
    Float(f64),
    /// `( pipeline )`, then maybe `.a.b` of its value.
    Nested(Rc<Pipeline>, Vec<String>),
}

/// A file's parsed body and the named templates (`define`) it holds.
pub struct Parsed {
    pub body: Vec<Node>,
    pub defines: BTreeMap<String, Rc<Vec<Node>>>,
}

/// Parses one file of templates.
pub fn parse(template: &str, source: &str) -> Result<Parsed, ParseError> {
    let items = scan(template, source)?;
    let mut parser = Parser {
        template,
        items: items.into_iter().peekable(),
        defines: BTreeMap::new(),
    };
    let (body, end) = parser.list()?;
    if let Some((line, word)) = end {
        return Err(parser.error(line, format!("unexpected {{{{{word}}}}}")));
    }
    Ok(Parsed {
        body,
        defines: parser.defines,
    })
}

/// What the scanner cuts a file into.
enum Item {
    Text(String),
    Action { line: usize, tokens: Vec<Token> },
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Pipe,
    Declare,
    Assign,
    Comma,
    Word(String),
    Field(Vec<String>),
    /// `.a.b` right after a `)`: fields of the parenthesised value.
    Chain(Vec<String>),
    Variable(String, Vec<String>),
    String(String),
    Integer(i64),
    Float(f64),
}

fn scan(template: &str, source: &str) -> Result<Vec<Item>, ParseError> {
    let error = |at: usize, message: String| ParseError {
        template: template.to_owned(),
        line: source[..at].matches('\n').count() + 1,
        message,
    };
    let mut items = Vec::new();
    let mut rest = 0;
    let mut trim_next = false;
    while rest < source.len() {
        let Some(found) = source[rest..].find("{{") else {
            push_text(&mut items, &source[rest..], trim_next, false);
            break;
        };
        let open = rest + found;
        let mut at = open + 2;
        let trim_before = source[at..].starts_with("- ")
            || source[at..].starts_with("-\n")
            || source[at..].starts_with("-\t");
        if trim_before {
            at += 2;
        }
        push_text(&mut items, &source[rest..open], trim_next, trim_before);
        let line = source[..open].matches('\n').count() + 1;
        let body = source[at..].trim_start();
        at = source.len() - body.len();
        if body.starts_with("/*") {
            let end = body
                .find("*/")
                .ok_or_else(|| error(open, "a comment that never ends".into()))?;
            at += end + 2;
            let after = &source[at..];
            let (close, trim) = if after.starts_with(" -}}") {
                (4, true)
            } else if after.starts_with("}}") {
                (2, false)
            } else {
                return Err(error(open, "a comment must end its action".into()));
            };
            rest = at + close;
            trim_next = trim;
            continue;
        }
        let (tokens, end, trim) = tokenize(source, at).map_err(|(at, m)| error(at, m))?;
        items.push(Item::Action { line, tokens });
        rest = end;
        trim_next = trim;
    }
    Ok(items)
}

fn push_text(items: &mut Vec<Item>, text: &str, trim_start: bool, trim_end: bool) {
    let mut text = text;
    if trim_start {
        text = text.trim_start();
    }
    if trim_end {
        text = text.trim_end();
    }
    if !text.is_empty() {
        items.push(Item::Text(text.to_owned()));
    }
}

type Scanned = (Vec<Token>, usize, bool);

/// The tokens of an action from `at` to its `}}`: the tokens, where the text goes on, and
/// whether the action trims the space after it.
fn tokenize(source: &str, mut at: usize) -> Result<Scanned, (usize, String)> {
    let bytes = source.as_bytes();
    let mut tokens = Vec::new();
    loop {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            if source[at..].starts_with(" -}}") {
                return Ok((tokens, at + 4, true));
            }
            at += 1;
        }
        if at >= bytes.len() {
            return Err((at, "an action that never ends (no `}}`)".into()));
        }
        if source[at..].starts_with("}}") {
            return Ok((tokens, at + 2, false));
        }
        let start = at;
        let c = bytes[at];
        let token = match c {
            b'(' => {
                at += 1;
                Token::Open
            }
            b')' => {
                at += 1;
                Token::Close
            }
            b'|' => {
                at += 1;
                Token::Pipe
            }
            b',' => {
                at += 1;
                Token::Comma
            }
            b'=' => {
                at += 1;
                Token::Assign
            }
            b':' if bytes.get(at + 1) == Some(&b'=') => {
                at += 2;
                Token::Declare
            }
            b'"' => {
                let (text, end) = quoted(source, at)?;
                at = end;
                Token::String(text)
            }
            b'`' => {
                let end = source[at + 1..]
                    .find('`')
                    .ok_or((at, "a raw string that never ends".to_owned()))?;
                let text = source[at + 1..at + 1 + end].to_owned();
                at += end + 2;
                Token::String(text)
            }
            b'.' => {
                let (names, end) = fields(source, at);
                at = end;
                Token::Field(names)
            }
            b'$' => {
                let name_end = word_end(source, at + 1);
                let name = source[at..name_end].to_owned();
                let (names, end) = fields(source, name_end);
                at = end;
                Token::Variable(name, names)
            }
            b'-' | b'+' | b'0'..=b'9' => {
                let end = number_end(source, at + 1);
                let text = &source[at..end];
                at = end;
                if let Ok(n) = text.parse::<i64>() {
                    Token::Integer(n)
                } else if let Ok(f) = text.parse::<f64>() {
                    Token::Float(f)
                } else {
                    return Err((start, format!("`{text}` is not a number")));
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end = word_end(source, at);
                let word = source[at..end].to_owned();
                at = end;
                Token::Word(word)
            }
            _ => {
                let c = source[at..].chars().next().unwrap_or('?');
                return Err((start, format!("unexpected `{c}` in an action")));
            }
        };
        // `(...).a.b` reads the fields of the parenthesised value.
        if token == Token::Close && bytes.get(at) == Some(&b'.') {
            let (names, end) = fields(source, at);
            tokens.push(token);
            tokens.push(Token::Chain(names));
            at = end;
            continue;
        }
        tokens.push(token);
    }
}

fn word_end(source: &str, mut at: usize) -> usize {
    let bytes = source.as_bytes();
    while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
        at += 1;
    }
    at
}

/// Where a number that starts at `at` ends (digits, a point, an exponent and its sign).
fn number_end(source: &str, mut at: usize) -> usize {
    let bytes = source.as_bytes();
    while at < bytes.len()
        && (bytes[at].is_ascii_alphanumeric()
            || bytes[at] == b'.'
            || bytes[at] == b'_'
            || (matches!(bytes[at], b'+' | b'-') && matches!(bytes[at - 1], b'e' | b'E')))
    {
        at += 1;
    }
    at
}

/// `.a.b.c` from `at` (which is a dot or the end of a variable's name).
fn fields(source: &str, mut at: usize) -> (Vec<String>, usize) {
    let bytes = source.as_bytes();
    let mut names = Vec::new();
    while at < bytes.len() && bytes[at] == b'.' {
        let start = at + 1;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if end > start {
            names.push(source[start..end].to_owned());
        }
        at = end;
        if end == start {
            break;
        }
    }
    (names, at)
}

/// A double-quoted Go string from `at` (its opening quote): its text and where it ends.
fn quoted(source: &str, at: usize) -> Result<(String, usize), (usize, String)> {
    let mut text = String::new();
    let mut chars = source[at + 1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((text, at + 1 + i + 1)),
            '\n' => break,
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => text.push('\n'),
                Some('t') => text.push('\t'),
                Some('r') => text.push('\r'),
                Some('\\') => text.push('\\'),
                Some('"') => text.push('"'),
                Some(other) => return Err((at, format!("unknown escape `\\{other}` in a string"))),
                None => break,
            },
            c => text.push(c),
        }
    }
    Err((at, "a string that never ends".into()))
}

struct Parser<'a> {
    template: &'a str,
    items: std::iter::Peekable<std::vec::IntoIter<Item>>,
    defines: BTreeMap<String, Rc<Vec<Node>>>,
}

/// The keyword action that ended a list: `end` or `else` (with what follows it).
type Ending = Option<(usize, String)>;

impl Parser<'_> {
    fn error(&self, line: usize, message: String) -> ParseError {
        ParseError {
            template: self.template.to_owned(),
            line,
            message,
        }
    }

    /// Nodes up to an `end` or `else` (returned, its tokens kept in `pending_else`) or the file's
    /// end.
    fn list(&mut self) -> Result<(Vec<Node>, Ending), ParseError> {
        let mut nodes = Vec::new();
        while let Some(item) = self.items.next() {
            let (line, tokens) = match item {
                Item::Text(text) => {
                    nodes.push(Node::Text(text));
                    continue;
                }
                Item::Action { line, tokens } => (line, tokens),
            };
            let keyword = match tokens.first() {
                Some(Token::Word(w)) => w.as_str(),
                _ => "",
            };
            match keyword {
                "end" => return Ok((nodes, Some((line, "end".into())))),
                "else" => {
                    // `else if ...` / `else with ...`: the rest is kept as the next action.
                    if tokens.len() > 1 {
                        self.push_back(line, tokens[1..].to_vec());
                    }
                    let word = if tokens.len() > 1 {
                        "else-chain"
                    } else {
                        "else"
                    };
                    return Ok((nodes, Some((line, word.into()))));
                }
                "if" | "with" | "range" => {
                    let pipe = self.pipeline(line, &tokens[1..], keyword == "range")?;
                    let branch = self.branch(line, pipe, keyword)?;
                    nodes.push(match keyword {
                        "if" => Node::If(branch),
                        "with" => Node::With(branch),
                        _ => Node::Range(branch),
                    });
                }
                "define" => {
                    let Some(Token::String(name)) = tokens.get(1) else {
                        return Err(self.error(line, "define needs a quoted name".into()));
                    };
                    let (body, end) = self.list()?;
                    if !matches!(&end, Some((_, w)) if w == "end") {
                        return Err(self.error(line, format!("define {name:?} has no {{{{end}}}}")));
                    }
                    self.defines.insert(name.clone(), Rc::new(body));
                }
                "template" => {
                    let Some(Token::String(name)) = tokens.get(1) else {
                        return Err(self.error(line, "template needs a quoted name".into()));
                    };
                    let pipe = if tokens.len() > 2 {
                        Some(self.pipeline(line, &tokens[2..], false)?)
                    } else {
                        None
                    };
                    nodes.push(Node::Template {
                        line,
                        name: name.clone(),
                        pipe,
                    });
                }
                "block" | "break" | "continue" => {
                    return Err(self.error(line, format!("{keyword} is not supported")));
                }
                _ => {
                    let pipe = self.pipeline(line, &tokens, false)?;
                    nodes.push(Node::Action { line, pipe });
                }
            }
        }
        Ok((nodes, None))
    }

    fn push_back(&mut self, line: usize, tokens: Vec<Token>) {
        let rest: Vec<Item> = std::iter::once(Item::Action { line, tokens })
            .chain(self.items.by_ref())
            .collect();
        self.items = rest.into_iter().peekable();
    }

    /// The body and `else` part of an `if`, `with` or `range`.
    fn branch(&mut self, line: usize, pipe: Pipeline, keyword: &str) -> Result<Branch, ParseError> {
        let (body, end) = self.list()?;
        let otherwise = match end {
            Some((_, w)) if w == "end" => Vec::new(),
            Some((_, w)) if w == "else" => {
                let (otherwise, end) = self.list()?;
                if !matches!(&end, Some((_, w)) if w == "end") {
                    return Err(self.error(line, format!("{keyword}'s else has no {{{{end}}}}")));
                }
                otherwise
            }
            Some((else_line, _)) => {
                // `else if`: one nested structure that consumes the shared `end`.
                let mut nested = self.list_one(else_line)?;
                vec![nested.remove(0)]
            }
            None => return Err(self.error(line, format!("{keyword} has no {{{{end}}}}"))),
        };
        Ok(Branch {
            line,
            pipe,
            body,
            otherwise,
        })
    }

    /// The one structure an `else if`/`else with` opens.
    fn list_one(&mut self, line: usize) -> Result<Vec<Node>, ParseError> {
        let Some(Item::Action { line: l, tokens }) = self.items.next() else {
            return Err(self.error(line, "else without a condition".into()));
        };
        let keyword = match tokens.first() {
            Some(Token::Word(w)) if w == "if" || w == "with" => w.clone(),
            _ => return Err(self.error(l, "only if and with may follow else".into())),
        };
        let pipe = self.pipeline(l, &tokens[1..], false)?;
        let branch = self.branch(l, pipe, &keyword)?;
        Ok(vec![if keyword == "if" {
            Node::If(branch)
        } else {
            Node::With(branch)
        }])
    }

    fn pipeline(&self, line: usize, tokens: &[Token], range: bool) -> Result<Pipeline, ParseError> {
        let mut tokens = tokens;
        let mut declare = Vec::new();
        let mut assign = false;
        // `$x :=`, `$x =`, and for range `$i, $x :=`.
        let mut look = 0;
        let mut names = Vec::new();
        while let Some(Token::Variable(name, f)) = tokens.get(look) {
            if !f.is_empty() {
                break;
            }
            names.push(name.clone());
            match tokens.get(look + 1) {
                Some(Token::Comma) if range && names.len() == 1 => look += 2,
                Some(Token::Declare) => {
                    declare = names.clone();
                    tokens = &tokens[look + 2..];
                    break;
                }
                Some(Token::Assign) => {
                    declare = names.clone();
                    assign = true;
                    tokens = &tokens[look + 2..];
                    break;
                }
                _ => break,
            }
        }
        let mut position = 0;
        let pipe = self.commands(line, tokens, &mut position)?;
        if position != tokens.len() {
            return Err(self.error(line, "unexpected `)`".into()));
        }
        Ok(Pipeline {
            declare,
            assign,
            commands: pipe,
        })
    }

    fn commands(
        &self,
        line: usize,
        tokens: &[Token],
        at: &mut usize,
    ) -> Result<Vec<Vec<Operand>>, ParseError> {
        let mut commands = vec![Vec::new()];
        while let Some(token) = tokens.get(*at) {
            *at += 1;
            let operand = match token {
                Token::Close => {
                    *at -= 1;
                    break;
                }
                Token::Pipe => {
                    commands.push(Vec::new());
                    continue;
                }
                Token::Open => {
                    let inner = self.commands(line, tokens, at)?;
                    if tokens.get(*at) != Some(&Token::Close) {
                        return Err(self.error(line, "a `(` without its `)`".into()));
                    }
                    *at += 1;
                    let names = match tokens.get(*at) {
                        Some(Token::Chain(names)) => {
                            *at += 1;
                            names.clone()
                        }
                        _ => Vec::new(),
                    };
                    let pipe = Pipeline {
                        declare: Vec::new(),
                        assign: false,
                        commands: inner,
                    };
                    Operand::Nested(Rc::new(pipe), names)
                }
                Token::Field(names) => Operand::Field(names.clone()),
                Token::Variable(name, names) => Operand::Variable(name.clone(), names.clone()),
                Token::Word(word) => Operand::Identifier(word.clone()),
                Token::String(s) => Operand::String(s.clone()),
                Token::Integer(n) => Operand::Integer(*n),
                Token::Float(f) => Operand::Float(*f),
                Token::Declare | Token::Assign | Token::Comma | Token::Chain(_) => {
                    return Err(self.error(line, "a variable may be declared only first".into()));
                }
            };
            if let Some(command) = commands.last_mut() {
                command.push(operand);
            }
        }
        if commands.iter().any(Vec::is_empty) {
            return Err(self.error(line, "an empty command".into()));
        }
        Ok(commands)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_markers_eat_the_space_on_their_side_only() {
        let parsed = parse("t", "a  {{- .x }}  b {{ .y -}}\n  c").unwrap();
        let texts: Vec<_> = parsed
            .body
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["a", "  b ", "c"]);
    }

    #[test]
    fn defines_are_collected_and_else_if_chains_nest() {
        let parsed = parse(
            "t",
            "{{/* c */}}{{ define \"n\" }}x{{ end }}{{ if .a }}1{{ else if .b }}2{{ else }}3{{ end }}",
        )
        .unwrap();
        assert!(parsed.defines.contains_key("n"));
        let [Node::If(branch)] = parsed.body.as_slice() else {
            panic!("{:?}", parsed.body)
        };
        assert!(matches!(branch.otherwise.as_slice(), [Node::If(_)]));
    }

    #[test]
    fn a_broken_template_is_refused_with_its_line() {
        let error = parse("chart/x.yaml", "a\n{{ if .x }}\nb").err().unwrap();
        assert_eq!(error.to_string(), "chart/x.yaml:2: if has no {{end}}");
        let error = parse("chart/x.yaml", "{{ \"open }}").err().unwrap();
        assert!(error.to_string().contains("never ends"), "{error}");
    }
}
