//! Runs parsed templates over values as Helm does: Go's printing of values, its truth, variables
//! scoped to their structure, `include` of named templates, and maps shared by reference (so a
//! `set` in one template is seen by the next).

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use super::functions;
use super::template::{self, Branch, Node, Operand, Pipeline};
pub use super::value::Value;

/// What went wrong while running a template: where, and what.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Parse(#[from] template::ParseError),
    #[error("{template}:{line}: {message}")]
    Execute {
        template: String,
        line: usize,
        message: String,
    },
    #[error("no template named {0:?}")]
    Missing(String),
}

/// The templates of a chart, named by path (`chart/templates/x.yaml`) and by `define`.
#[derive(Default)]
pub struct Engine {
    named: HashMap<String, Rc<Vec<Node>>>,
    /// The chart's other files, for `.Files.Get`.
    pub files: BTreeMap<String, String>,
}

/// The data `.` and `$` stand for while a template runs, and its variables.
struct Scope {
    root: Value,
    variables: Vec<(String, Value)>,
}

impl Engine {
    /// Parses a file and keeps it under its path, with the templates it defines.
    pub fn add(&mut self, name: &str, source: &str) -> Result<(), RenderError> {
        let parsed = template::parse(name, source)?;
        self.named.insert(name.to_owned(), Rc::new(parsed.body));
        for (define, body) in parsed.defines {
            self.named.insert(define, body);
        }
        Ok(())
    }

    /// Runs the template named `name` with `data` as its dot.
    pub fn render(&self, name: &str, data: &Value) -> Result<String, RenderError> {
        let body = self
            .named
            .get(name)
            .ok_or_else(|| RenderError::Missing(name.to_owned()))?;
        let mut scope = Scope {
            root: data.clone(),
            variables: Vec::new(),
        };
        let mut out = String::new();
        let runner = Runner { engine: self, name };
        runner.nodes(body, data, &mut scope, &mut out)?;
        Ok(out)
    }
}

/// One template's run: the engine (for `include`) and its name (for errors).
struct Runner<'a> {
    engine: &'a Engine,
    name: &'a str,
}

impl Runner<'_> {
    fn error(&self, line: usize, message: impl Into<String>) -> RenderError {
        RenderError::Execute {
            template: self.name.to_owned(),
            line,
            message: message.into(),
        }
    }

    fn nodes(
        &self,
        nodes: &[Node],
        dot: &Value,
        scope: &mut Scope,
        out: &mut String,
    ) -> Result<(), RenderError> {
        for node in nodes {
            match node {
                Node::Text(text) => out.push_str(text),
                Node::Action { line, pipe } => {
                    let value = self.pipeline(*line, pipe, dot, scope)?;
                    if pipe.declare.is_empty() {
                        out.push_str(&value.print());
                    }
                }
                Node::If(branch) => {
                    let mark = scope.variables.len();
                    let value = self.pipeline(branch.line, &branch.pipe, dot, scope)?;
                    let body = if value.truthy() {
                        &branch.body
                    } else {
                        &branch.otherwise
                    };
                    self.nodes(body, dot, scope, out)?;
                    scope.variables.truncate(mark);
                }
                Node::With(branch) => {
                    let mark = scope.variables.len();
                    let value = self.pipeline(branch.line, &branch.pipe, dot, scope)?;
                    if value.truthy() {
                        self.nodes(&branch.body, &value, scope, out)?;
                    } else {
                        self.nodes(&branch.otherwise, dot, scope, out)?;
                    }
                    scope.variables.truncate(mark);
                }
                Node::Range(branch) => self.range(branch, dot, scope, out)?,
                Node::Template { line, name, pipe } => {
                    let data = match pipe {
                        Some(pipe) => self.pipeline(*line, pipe, dot, scope)?,
                        None => Value::Nil,
                    };
                    out.push_str(&self.engine.render(name, &data)?);
                }
            }
        }
        Ok(())
    }

    fn range(
        &self,
        branch: &Branch,
        dot: &Value,
        scope: &mut Scope,
        out: &mut String,
    ) -> Result<(), RenderError> {
        let mark = scope.variables.len();
        let declare = &branch.pipe.declare;
        let undeclared = Pipeline {
            declare: Vec::new(),
            assign: false,
            commands: branch.pipe.commands.clone(),
        };
        let value = self.pipeline(branch.line, &undeclared, dot, scope)?;
        let items: Vec<(Value, Value)> = match &value {
            Value::List(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (Value::Integer(i as i64), v.clone()))
                .collect(),
            Value::Map(entries) => entries
                .borrow()
                .iter()
                .map(|(k, v)| (Value::string(k), v.clone()))
                .collect(),
            Value::Nil => Vec::new(),
            other => {
                return Err(self.error(
                    branch.line,
                    format!("range can't iterate over {}", other.print()),
                ));
            }
        };
        if items.is_empty() {
            self.nodes(&branch.otherwise, dot, scope, out)?;
        }
        for (key, item) in items {
            let inner = scope.variables.len();
            match declare.as_slice() {
                [one] => scope.variables.push((one.clone(), item.clone())),
                [index, element] => {
                    scope.variables.push((index.clone(), key));
                    scope.variables.push((element.clone(), item.clone()));
                }
                _ => {}
            }
            self.nodes(&branch.body, &item, scope, out)?;
            scope.variables.truncate(inner);
        }
        scope.variables.truncate(mark);
        Ok(())
    }

    fn pipeline(
        &self,
        line: usize,
        pipe: &Pipeline,
        dot: &Value,
        scope: &mut Scope,
    ) -> Result<Value, RenderError> {
        let mut last: Option<Value> = None;
        for command in &pipe.commands {
            last = Some(self.command(line, command, last, dot, scope)?);
        }
        let value = last.unwrap_or(Value::Nil);
        if let [name] = pipe.declare.as_slice() {
            if pipe.assign {
                let slot = scope
                    .variables
                    .iter_mut()
                    .rev()
                    .find(|(n, _)| n == name)
                    .ok_or_else(|| self.error(line, format!("undefined variable {name}")))?;
                slot.1 = value.clone();
            } else {
                scope.variables.push((name.clone(), value.clone()));
            }
        }
        Ok(value)
    }

    fn command(
        &self,
        line: usize,
        command: &[Operand],
        piped: Option<Value>,
        dot: &Value,
        scope: &mut Scope,
    ) -> Result<Value, RenderError> {
        let (first, rest) = command
            .split_first()
            .ok_or_else(|| self.error(line, "an empty command"))?;
        let function = match first {
            Operand::Identifier(name) if !matches!(name.as_str(), "true" | "false" | "nil") => {
                Some(name.as_str())
            }
            Operand::Field(names) if names.len() == 2 && names[0] == "Files" => {
                Some("Files.Get").filter(|_| names[1] == "Get")
            }
            _ => None,
        };
        let Some(function) = function else {
            if !rest.is_empty() || piped.is_some() {
                return Err(self.error(line, "arguments given to a value that is not a function"));
            }
            return self.operand(line, first, dot, scope);
        };
        let mut arguments = Vec::with_capacity(rest.len() + 1);
        for operand in rest {
            arguments.push(self.operand(line, operand, dot, scope)?);
        }
        arguments.extend(piped);
        match function {
            "include" => {
                let [Value::String(name), data] = arguments.as_slice() else {
                    return Err(self.error(line, "include takes a name and a value"));
                };
                self.engine
                    .render(name, data)
                    .map(Value::String)
                    .map_err(|e| self.error(line, format!("include {name:?}: {e}")))
            }
            "Files.Get" => {
                let [Value::String(path)] = arguments.as_slice() else {
                    return Err(self.error(line, ".Files.Get takes a path"));
                };
                Ok(Value::string(
                    self.engine.files.get(path).cloned().unwrap_or_default(),
                ))
            }
            name => functions::call(name, arguments).map_err(|message| self.error(line, message)),
        }
    }

    fn operand(
        &self,
        line: usize,
        operand: &Operand,
        dot: &Value,
        scope: &mut Scope,
    ) -> Result<Value, RenderError> {
        Ok(match operand {
            Operand::Field(names) => walk(dot.clone(), names),
            Operand::Variable(name, names) => {
                let value = if name == "$" {
                    scope.root.clone()
                } else {
                    scope
                        .variables
                        .iter()
                        .rev()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                        .ok_or_else(|| self.error(line, format!("undefined variable {name}")))?
                };
                walk(value, names)
            }
            Operand::Identifier(word) => match word.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "nil" => Value::Nil,
                name => functions::call(name, Vec::new()).map_err(|m| self.error(line, m))?,
            },
            Operand::String(s) => Value::string(s),
            Operand::Integer(n) => Value::Integer(*n),
            Operand::Float(f) => Value::Float(*f),
            Operand::Nested(pipe, names) => {
                let value = self.pipeline(line, pipe, dot, scope)?;
                walk(value, names)
            }
        })
    }
}

/// `.a.b` of a value: nil where a step is missing.
fn walk(mut value: Value, names: &[String]) -> Value {
    for name in names {
        value = value.get(name);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, data: Value) -> Result<String, RenderError> {
        let mut engine = Engine::default();
        engine.add("t", source)?;
        engine.render("t", &data)
    }

    fn values() -> Value {
        let json = serde_json::json!({
            "Values": {"name": "west", "port": 4433, "empty": "", "list": ["a", "b"],
                       "nested": {"k": "v"}},
        });
        Value::from_json(&json)
    }

    #[test]
    fn fields_variables_and_structures_render_as_go_does() {
        let text = "{{ $n := .Values.name }}{{ with .Values.nested }}{{ .k }}-{{ $n }}{{ end }} \
                    {{ if .Values.empty }}no{{ else if .Values.port }}{{ .Values.port }}{{ end }} \
                    {{ range $i, $x := .Values.list }}{{ $i }}{{ $x }}{{ end }} \
                    {{ $v := \"a\" }}{{ if true }}{{ $v = \"b\" }}{{ end }}{{ $v }} [{{ .Values.missing }}]";
        assert_eq!(render(text, values()).unwrap(), "v-west 4433 0a1b b []");
    }

    #[test]
    fn include_renders_a_define_and_set_is_seen_by_later_templates() {
        let text = "{{ define \"x\" }}<{{ .name }}>{{ end }}{{ include \"x\" .Values | upper }}\
                    {{ $_ := set .Values \"memo\" \"kept\" }}{{ include \"y\" . }}\
                    {{ define \"y\" }}{{ .Values.memo }}{{ end }}";
        assert_eq!(render(text, values()).unwrap(), "<WEST>kept");
    }

    #[test]
    fn a_failure_names_the_template_and_its_line() {
        let error = render(
            "a\n{{ required \"values: x is required\" .Values.x }}",
            values(),
        )
        .err()
        .unwrap();
        assert_eq!(error.to_string(), "t:2: values: x is required");
        let error = render("{{ .Values.name 3 }}", values()).err().unwrap();
        assert!(error.to_string().contains("not a function"), "{error}");
        let error = render("{{ nosuch 1 }}", values()).err().unwrap();
        assert!(error.to_string().contains("nosuch"), "{error}");
    }
}
