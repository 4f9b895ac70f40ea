//! A Terraform configuration folder parsed with hcl-rs, and what its expressions refer to.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hcl::expr::{Expression, ObjectKey, Operation, TemplateExpr, TraversalOperator};
use hcl::template::{Directive, Element, Template};
use hcl::{Block, Body};

/// A Terraform configuration folder: each `.tf` file's name and parsed body.
pub(super) struct Config {
    pub(super) files: Vec<(String, Body)>,
}

impl Config {
    /// Parses every `.tf` file of a folder (not of its subfolders).
    pub(super) fn load(dir: &Path) -> Config {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|entry| entry.expect("a readable folder entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "tf"))
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "no .tf file in {}", dir.display());
        let files = paths
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                let body =
                    hcl::parse(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
                (file_name(path), body)
            })
            .collect();
        Config { files }
    }

    /// The top-level blocks of one kind (`resource`, `variable`, ...), in file order.
    pub(super) fn blocks<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
        self.files
            .iter()
            .flat_map(|(_, body)| body.blocks())
            .filter(move |block| block.identifier() == kind)
    }

    /// The resources of one type: their names and bodies.
    pub(super) fn resources<'a>(&'a self, resource_type: &str) -> Vec<(&'a str, &'a Body)> {
        self.blocks("resource")
            .filter(|block| label(block, 0) == Some(resource_type))
            .map(|block| (label(block, 1).unwrap_or_default(), block.body()))
            .collect()
    }

    /// The one resource of a type.
    pub(super) fn resource(&self, resource_type: &str) -> &Body {
        let found = self.resources(resource_type);
        assert_eq!(found.len(), 1, "one {resource_type} expected");
        found[0].1
    }

    /// The block of a kind with this name (`variable "x"`, `output "x"`).
    pub(super) fn named<'a>(&'a self, kind: &'a str, name: &str) -> Option<&'a Body> {
        self.blocks(kind)
            .find(|block| label(block, 0) == Some(name))
            .map(Block::body)
    }

    /// The names of the blocks of a kind.
    pub(super) fn names(&self, kind: &str) -> BTreeSet<String> {
        self.blocks(kind)
            .filter_map(|block| label(block, 0).map(str::to_owned))
            .collect()
    }

    /// A local value's expression.
    pub(super) fn local(&self, name: &str) -> Option<&Expression> {
        self.blocks("locals")
            .find_map(|block| attribute(block.body(), name))
    }

    /// The values the module gives its Helm release, as the object it `yamlencode`s.
    pub(super) fn helm_values(&self) -> Expression {
        let values = attribute(self.resource("helm_release"), "values")
            .expect("the Helm release sets values");
        let mut encoded = None;
        walk(values, &mut |expr| {
            if let Expression::FuncCall(call) = expr
                && call.name.name.as_str() == "yamlencode"
            {
                encoded = call.args.first().cloned();
            }
        });
        encoded.expect("the Helm values are yamlencode({...})")
    }
}

/// A path's file name.
pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A block's label at a position.
pub(super) fn label(block: &Block, index: usize) -> Option<&str> {
    block.labels().get(index).map(|label| label.as_str())
}

/// An attribute's expression.
pub(super) fn attribute<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes()
        .find(|attribute| attribute.key() == key)
        .map(|attribute| attribute.expr())
}

/// An attribute that must be there.
pub(super) fn required<'a>(body: &'a Body, key: &str) -> &'a Expression {
    attribute(body, key).unwrap_or_else(|| panic!("{key} is missing"))
}

/// An expression as Terraform source text.
pub(super) fn text(expr: &Expression) -> String {
    hcl::format::to_string(expr).expect("an expression formats")
}

/// A literal string's value, or `None` for any other expression.
pub(super) fn literal(expr: &Expression) -> Option<&str> {
    match expr {
        Expression::String(value) => Some(value),
        _ => None,
    }
}

/// A field of an object expression.
pub(super) fn field<'a>(object: &'a Expression, key: &str) -> Option<&'a Expression> {
    let Expression::Object(object) = object else {
        return None;
    };
    object.iter().find_map(|(name, value)| {
        let name = match name {
            ObjectKey::Identifier(identifier) => identifier.as_str().to_owned(),
            ObjectKey::Expression(Expression::String(name)) => name.clone(),
            ObjectKey::Expression(other) => text(other),
            _ => return None,
        };
        (name == key).then_some(value)
    })
}

/// Visits an expression and every expression inside it, interpolations included.
pub(super) fn walk(expr: &Expression, visit: &mut dyn FnMut(&Expression)) {
    visit(expr);
    match expr {
        Expression::Array(items) => items.iter().for_each(|item| walk(item, visit)),
        Expression::Object(object) => {
            for (key, value) in object.iter() {
                if let ObjectKey::Expression(key) = key {
                    walk(key, visit);
                }
                walk(value, visit);
            }
        }
        Expression::TemplateExpr(template) => walk_template(template, visit),
        Expression::Traversal(traversal) => {
            walk(&traversal.expr, visit);
            for operator in &traversal.operators {
                if let TraversalOperator::Index(index) = operator {
                    walk(index, visit);
                }
            }
        }
        Expression::FuncCall(call) => call.args.iter().for_each(|arg| walk(arg, visit)),
        Expression::Parenthesis(inner) => walk(inner, visit),
        Expression::Conditional(conditional) => {
            walk(&conditional.cond_expr, visit);
            walk(&conditional.true_expr, visit);
            walk(&conditional.false_expr, visit);
        }
        Expression::Operation(operation) => match operation.as_ref() {
            Operation::Unary(unary) => walk(&unary.expr, visit),
            Operation::Binary(binary) => {
                walk(&binary.lhs_expr, visit);
                walk(&binary.rhs_expr, visit);
            }
        },
        Expression::ForExpr(for_expr) => {
            walk(&for_expr.collection_expr, visit);
            if let Some(key) = &for_expr.key_expr {
                walk(key, visit);
            }
            walk(&for_expr.value_expr, visit);
            if let Some(condition) = &for_expr.cond_expr {
                walk(condition, visit);
            }
        }
        _ => {}
    }
}

/// Visits the expressions interpolated in a string template.
pub(super) fn walk_template(template: &TemplateExpr, visit: &mut dyn FnMut(&Expression)) {
    let template = Template::from_expr(template)
        .unwrap_or_else(|e| panic!("template {template:?} does not parse: {e}"));
    walk_elements(&template, visit);
}

/// Visits the expressions of a parsed template's elements.
pub(super) fn walk_elements(template: &Template, visit: &mut dyn FnMut(&Expression)) {
    for element in template.elements() {
        match element {
            Element::Literal(_) => {}
            Element::Interpolation(interpolation) => walk(&interpolation.expr, visit),
            Element::Directive(directive) => match directive.as_ref() {
                Directive::If(branch) => {
                    walk(&branch.cond_expr, visit);
                    walk_elements(&branch.true_template, visit);
                    if let Some(otherwise) = &branch.false_template {
                        walk_elements(otherwise, visit);
                    }
                }
                Directive::For(each) => {
                    walk(&each.collection_expr, visit);
                    walk_elements(&each.template, visit);
                }
            },
        }
    }
}

/// What an expression refers to, as `var.x`, `local.x` or `TYPE.NAME` (a resource or module).
pub(super) fn references(expr: &Expression) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    walk(expr, &mut |expr| {
        if let Expression::Traversal(traversal) = expr
            && let Expression::Variable(root) = &traversal.expr
            && let Some(TraversalOperator::GetAttr(name)) = traversal.operators.first()
        {
            found.insert(format!("{}.{}", root.as_str(), name.as_str()));
        }
    });
    found
}

/// Whether an expression refers to this (`var.quic_port`, `aws_eip.gateway`, ...).
pub(super) fn refers_to(expr: &Expression, what: &str) -> bool {
    references(expr).contains(what)
}
