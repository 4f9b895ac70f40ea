//! What Terraform 1.0 refuses: blocks, arguments and functions of later releases, and
//! validations that refer to other variables.

use std::collections::BTreeSet;

use hcl::expr::Expression;
use hcl::{Block, Body};

use super::config::{attribute, label, references, walk};

/// Blocks that Terraform 1.0 refuses, with the release that brought them, and where they go.
const LATER_BLOCKS: [(&str, &str); 8] = [
    ("moved", "1.1"),
    ("cloud", "1.1"),
    ("precondition", "1.2"),
    ("postcondition", "1.2"),
    ("check", "1.5"),
    ("import", "1.5"),
    ("removed", "1.7"),
    ("ephemeral", "1.10"),
];

/// Arguments that Terraform 1.0 refuses, with the release that brought them.
const LATER_ARGUMENTS: [(&str, &str); 3] = [
    ("nullable", "1.1"),
    ("replace_triggered_by", "1.2"),
    ("ephemeral", "1.10"),
];

/// Functions that Terraform 1.0 does not have, with the release that brought them.
const LATER_FUNCTIONS: [(&str, &str); 9] = [
    ("optional", "1.3"),
    ("startswith", "1.3"),
    ("endswith", "1.3"),
    ("timecmp", "1.3"),
    ("strcontains", "1.5"),
    ("plantimestamp", "1.5"),
    ("issensitive", "1.8"),
    ("templatestring", "1.9"),
    ("ephemeralasnull", "1.10"),
];

/// What Terraform 1.0 would refuse in a body, as lines naming the place.
pub(super) fn newer_than_terraform_1_0(body: &Body, place: &str, found: &mut Vec<String>) {
    for attribute in body.attributes() {
        let key = attribute.key();
        if let Some((_, release)) = LATER_ARGUMENTS.iter().find(|(name, _)| *name == key) {
            found.push(format!("{place}: argument {key} (Terraform {release})"));
        }
        walk(attribute.expr(), &mut |expr| {
            if let Expression::FuncCall(call) = expr {
                let name = call.name.name.as_str();
                if call.name.is_namespaced() {
                    found.push(format!(
                        "{place}.{key}: provider function {} (1.8)",
                        call.name
                    ));
                } else if let Some((_, release)) = LATER_FUNCTIONS.iter().find(|(f, _)| *f == name)
                {
                    found.push(format!("{place}.{key}: {name}() (Terraform {release})"));
                }
            }
        });
    }
    for block in body.blocks() {
        let kind = block.identifier();
        let labels: Vec<&str> = block.labels().iter().map(|label| label.as_str()).collect();
        let inner = format!("{place} > {kind} {}", labels.join(" "));
        if let Some((_, release)) = LATER_BLOCKS.iter().find(|(name, _)| *name == kind) {
            found.push(format!("{inner}: block {kind} (Terraform {release})"));
        }
        if matches!(kind, "resource" | "data") && labels.first() == Some(&"terraform_data") {
            found.push(format!("{inner}: terraform_data (Terraform 1.4)"));
        }
        if kind == "variable" {
            own_variable_only(block, &inner, found);
        }
        newer_than_terraform_1_0(block.body(), &inner, found);
    }
}

/// Terraform before 1.9 lets a variable's validation refer to that variable only (and to the
/// names its `for` expressions bind).
fn own_variable_only(variable: &Block, place: &str, found: &mut Vec<String>) {
    let own = format!("var.{}", label(variable, 0).unwrap_or_default());
    for validation in variable.body().blocks() {
        let Some(condition) = attribute(validation.body(), "condition") else {
            continue;
        };
        let mut bound = BTreeSet::new();
        walk(condition, &mut |expr| {
            if let Expression::ForExpr(each) = expr {
                bound.insert(each.value_var.as_str().to_owned());
                if let Some(key) = &each.key_var {
                    bound.insert(key.as_str().to_owned());
                }
            }
        });
        for reference in references(condition) {
            let root = reference.split('.').next().unwrap_or_default();
            if reference != own && !bound.contains(root) {
                found.push(format!(
                    "{place}: validation refers to {reference} (Terraform 1.9)"
                ));
            }
        }
    }
}
