//! The API server's static cost estimate of a CRD's `x-kubernetes-validations`
//! rules, ported so that a rule that would make `kubectl apply` of the CRD
//! fail fails a test first.
//!
//! Before it accepts a CRD, the API server estimates the worst-case cost of
//! every rule from the schema's bounds alone, multiplies it by how many times
//! the rule's node can occur in one object, and refuses the CRD when one rule
//! exceeds [`PER_RULE_LIMIT`] or all of them together exceed
//! [`PER_CRD_LIMIT`]. This is that model, for the CEL functions and macros
//! Ringway's CRD uses; any other function stops the estimate with a message
//! saying which file of cel-go to port it from, so nothing is guessed.
//!
//! Ported from Kubernetes v1.36.3 (`k8s.io/apiserver` and
//! `k8s.io/apiextensions-apiserver` v0.36.3, which build with
//! `github.com/google/cel-go` v0.26.0):
//!
//! - limits: `StaticEstimatedCostLimit` and `StaticEstimatedCRDCostLimit` in
//!   apiextensions-apiserver `pkg/apis/apiextensions/validation/validation.go`,
//!   with `getExpressionCost` (rule cost × cardinality) and
//!   `getCostErrorMessage` (the wording of the refusal);
//! - cardinality: `CELSchemaContext.childContext` and `extractMaxElements` in
//!   `pkg/apis/apiextensions/validation/cel_validation.go`, and
//!   `maxCardinality` in `pkg/apiserver/schema/cel/compilation.go`;
//! - sizes of strings, lists, maps and int-or-strings: `SchemaDeclType` in
//!   apiserver `pkg/cel/common/schemas.go`, the minimum serialized sizes in
//!   `pkg/cel/limits.go`, `MaxRequestSizeBytes` in `pkg/apis/cel/config.go`,
//!   and `sizeEstimator.EstimateSize` in apiextensions-apiserver
//!   `pkg/apiserver/schema/cel/compilation.go` (note that it gives numbers
//!   and objects a size of 0, not 1);
//! - costs of expressions: cel-go `checker/cost.go` (`coster`) and
//!   `common/cost.go` (the constants), with `has()` free as apiserver's
//!   `pkg/cel/environment/base.go` sets (`PresenceTestHasCost(false)`).
//!
//! One difference between versions matters and is taken the costlier way:
//! before v1.34, `maxLength` on an `x-kubernetes-int-or-string` field did not
//! bound its size (it counted as a 3 MiB string); this model keeps that, so a
//! rule that fits here fits on every supported version.

use std::collections::BTreeMap;

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};
use serde_json::Value;

/// `StaticEstimatedCostLimit`: the most one rule may cost, times its
/// cardinality.
pub const PER_RULE_LIMIT: u64 = 10_000_000;
/// `StaticEstimatedCRDCostLimit`: the most all of a CRD's rules may cost.
pub const PER_CRD_LIMIT: u64 = 100_000_000;
/// `MaxRequestSizeBytes`: bounds what no schema keyword bounds.
const MAX_REQUEST_SIZE_BYTES: u64 = 3 * 1024 * 1024;

// cel-go common/cost.go.
const SELECT_AND_IDENT_COST: u64 = 1;
const LIST_CREATE_BASE_COST: u64 = 10;
const STRING_TRAVERSAL_COST_FACTOR: f64 = 0.1;
const REGEX_STRING_LENGTH_COST_FACTOR: f64 = 0.25;
/// k8s turns off cel-go's charge for `has()`.
const PRESENCE_TEST_COST: u64 = 0;

// k8s.io/apiserver pkg/cel/limits.go.
const MIN_STRING_SIZE: u64 = 2;
const MIN_BOOL_SIZE: u64 = 4;
const MIN_NUMBER_SIZE: u64 = 1;

/// One rule and what the API server would charge for it.
#[derive(Debug)]
pub struct RuleCost {
    /// Where the rule sits, as the API server names it in its errors.
    pub path: String,
    pub rule: String,
    /// Worst-case cost of one evaluation.
    pub per_call: u64,
    /// How many times the rule's node can occur in one object.
    pub cardinality: u64,
}

impl RuleCost {
    /// What counts against the limits: `getExpressionCost`.
    pub fn total(&self) -> u64 {
        self.per_call.saturating_mul(self.cardinality)
    }
}

/// The API server's wording when `cost` exceeds `limit`, from
/// `getCostErrorMessage`.
pub fn exceeds_message(what: &str, cost: u64, limit: u64) -> String {
    let factor = cost as f64 / limit as f64;
    let factor = if factor > 100.0 {
        "more than 100x".to_owned()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!(
        "{what} exceeds budget by factor of {factor} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

/// Every rule of `schema` (a CRD version's `openAPIV3Schema`), with its cost.
pub fn rule_costs(schema: &Value) -> Vec<RuleCost> {
    let mut out = Vec::new();
    walk(schema, "spec.validation.openAPIV3Schema", Some(1), &mut out);
    out
}

/// Visits every node with rules; `cardinality` is `None` where some list or
/// map above has no bound.
fn walk(schema: &Value, path: &str, cardinality: Option<u64>, out: &mut Vec<RuleCost>) {
    if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
        let decl = Decl::of(schema);
        // Unbounded: as many as fit in a request (`maxCardinality`).
        let cardinality =
            cardinality.unwrap_or(MAX_REQUEST_SIZE_BYTES / (decl.min_serialized_size() + 1));
        for (i, rule) in rules.iter().enumerate() {
            assert!(
                rule.get("messageExpression").is_none(),
                "{path}: messageExpression is not modeled; port its estimate from apiextensions-apiserver compilation.go"
            );
            let text = rule["rule"].as_str().expect("a rule has text");
            out.push(RuleCost {
                path: format!("{path}.x-kubernetes-validations[{i}].rule"),
                rule: text.to_owned(),
                per_call: estimate(text, &decl).max,
                cardinality,
            });
        }
    }
    // `extractMaxElements`: what this node multiplies its children by.
    let factor = match schema["type"].as_str() {
        Some("array") => schema["maxItems"].as_u64(),
        Some("object") if schema["additionalProperties"].is_object() => {
            schema["maxProperties"].as_u64()
        }
        _ => Some(1),
    };
    let child = cardinality.zip(factor).map(|(c, f)| c.saturating_mul(f));
    if let Some(properties) = schema["properties"].as_object() {
        for (name, property) in properties {
            walk(property, &format!("{path}.properties[{name}]"), child, out);
        }
    }
    if schema["items"].is_object() {
        walk(&schema["items"], &format!("{path}.items"), child, out);
    }
    if schema["additionalProperties"].is_object() {
        walk(
            &schema["additionalProperties"],
            &format!("{path}.additionalProperties"),
            child,
            out,
        );
    }
}

/// The worst-case cost of `rule` evaluated with `self` of type `root`.
pub fn estimate(rule: &str, root: &Decl) -> Cost {
    let ast = cel::parser::Parser::new()
        .parse(rule)
        .unwrap_or_else(|e| panic!("{rule}: does not parse: {e}"));
    let mut coster = Coster {
        root,
        locals: Vec::new(),
    };
    coster.node(&ast).cost
}

/// A `[min, max]` cost or size, as cel-go's `CostEstimate`/`SizeEstimate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    pub min: u64,
    pub max: u64,
}

impl Cost {
    const UNKNOWN: Cost = Cost {
        min: 0,
        max: u64::MAX,
    };

    fn fixed(n: u64) -> Cost {
        Cost { min: n, max: n }
    }

    fn add(self, o: Cost) -> Cost {
        Cost {
            min: self.min.saturating_add(o.min),
            max: self.max.saturating_add(o.max),
        }
    }

    fn multiply(self, o: Cost) -> Cost {
        Cost {
            min: self.min.saturating_mul(o.min),
            max: self.max.saturating_mul(o.max),
        }
    }

    fn union(self, o: Cost) -> Cost {
        Cost {
            min: self.min.min(o.min),
            max: self.max.max(o.max),
        }
    }

    /// `MultiplyByCostFactor`: rounded up, saturating.
    fn by_factor(self, factor: f64) -> Cost {
        let scale = |x: u64| {
            let product = (x as f64 * factor).ceil();
            if product >= u64::MAX as f64 {
                u64::MAX
            } else {
                product as u64
            }
        };
        Cost {
            min: scale(self.min),
            max: scale(self.max),
        }
    }
}

/// A schema node as CEL sees it (apiserver's `DeclType`), which is also the
/// type of every expression here.
#[derive(Clone, Debug)]
pub enum Decl {
    Object(BTreeMap<String, (Decl, bool)>),
    /// `max`: the most items, from `maxItems` or the request size.
    List(Box<Decl>, u64),
    /// `max`: the most entries, from `maxProperties` or the request size.
    Map(Box<Decl>, u64),
    /// `max`: the most bytes (4 per character of `maxLength`).
    String(u64),
    Bytes(u64),
    /// `x-kubernetes-int-or-string`, with the size of its string form.
    Dyn(u64),
    Int,
    Uint,
    Double,
    Bool,
    Null,
}

impl Decl {
    /// `SchemaDeclType` for the schema keywords Ringway's CRD uses.
    pub fn of(schema: &Value) -> Decl {
        assert!(
            schema["x-kubernetes-preserve-unknown-fields"] != true
                && schema["x-kubernetes-embedded-resource"] != true,
            "preserved or embedded fields are not modeled"
        );
        if schema["x-kubernetes-int-or-string"] == true {
            // The size before v1.34, which ignored maxLength here.
            return Decl::Dyn(MAX_REQUEST_SIZE_BYTES - 2);
        }
        match schema["type"].as_str() {
            Some("array") => {
                let items = Decl::of(&schema["items"]);
                let max = schema["maxItems"].as_u64().unwrap_or_else(|| {
                    (MAX_REQUEST_SIZE_BYTES - 2) / (items.min_serialized_size() + 1)
                });
                Decl::List(Box::new(items), max)
            }
            Some("object") if schema["additionalProperties"].is_object() => {
                let values = Decl::of(&schema["additionalProperties"]);
                let max = schema["maxProperties"].as_u64().unwrap_or_else(|| {
                    (MAX_REQUEST_SIZE_BYTES - 2) / (values.min_serialized_size() + 6)
                });
                Decl::Map(Box::new(values), max)
            }
            Some("object") => {
                let required: Vec<&str> = schema["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let fields = schema["properties"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, property)| {
                        let counts =
                            required.contains(&name.as_str()) && property.get("default").is_none();
                        (name.clone(), (Decl::of(property), counts))
                    })
                    .collect();
                Decl::Object(fields)
            }
            Some("string") => {
                let format = schema["format"].as_str().unwrap_or("");
                assert!(
                    format.is_empty() || format == "byte",
                    "string format {format:?} is not modeled; see SchemaDeclType"
                );
                let max = match (schema["maxLength"].as_u64(), schema["enum"].as_array()) {
                    (Some(len), _) => len * 4,
                    (None, Some(values)) => values
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|v| v.len() as u64)
                        .max()
                        .unwrap_or(0),
                    (None, None) => MAX_REQUEST_SIZE_BYTES - 2,
                };
                if format == "byte" {
                    Decl::Bytes(schema["maxLength"].as_u64().unwrap_or(max))
                } else {
                    Decl::String(max)
                }
            }
            Some("integer") => Decl::Int,
            Some("number") => Decl::Double,
            Some("boolean") => Decl::Bool,
            other => panic!("schema type {other:?} is not modeled"),
        }
    }

    /// `MinSerializedSize`: the fewest bytes a value takes in JSON.
    fn min_serialized_size(&self) -> u64 {
        match self {
            Decl::Object(fields) => {
                2 + fields
                    .iter()
                    .filter(|(_, (_, counts))| *counts)
                    .map(|(name, (decl, _))| name.len() as u64 + decl.min_serialized_size() + 4)
                    .sum::<u64>()
            }
            Decl::List(..) | Decl::Map(..) => 2,
            Decl::String(_) | Decl::Bytes(_) => MIN_STRING_SIZE,
            Decl::Bool => MIN_BOOL_SIZE,
            Decl::Int | Decl::Uint | Decl::Double | Decl::Dyn(_) | Decl::Null => MIN_NUMBER_SIZE,
        }
    }

    /// `MaxElements`, which is what the API server's size estimate returns
    /// for any node it reaches by path (0 for numbers and objects).
    fn max_elements(&self) -> u64 {
        match self {
            Decl::List(_, max)
            | Decl::Map(_, max)
            | Decl::String(max)
            | Decl::Bytes(max)
            | Decl::Dyn(max) => *max,
            _ => 0,
        }
    }

    /// cel-go's `isScalar`: sizes of 1 for values with no length.
    fn is_scalar(&self) -> bool {
        matches!(self, Decl::Int | Decl::Uint | Decl::Double | Decl::Bool)
    }

    fn may_be_string(&self) -> bool {
        matches!(self, Decl::String(_) | Decl::Dyn(_))
    }
}

/// What the coster knows of one expression.
struct Node {
    cost: Cost,
    ty: Decl,
    /// The field path from `self` (cel-go's `exprPaths`), empty if none.
    path: Vec<String>,
    /// cel-go's `computeSize`, when it has one.
    size: Option<Cost>,
}

struct Local {
    name: String,
    ty: Decl,
    path: Vec<String>,
    size: Option<Cost>,
}

struct Coster<'a> {
    root: &'a Decl,
    locals: Vec<Local>,
}

impl Coster<'_> {
    fn node(&mut self, e: &IdedExpr) -> Node {
        match &e.expr {
            Expr::Literal(literal) => literal_node(literal),
            Expr::Ident(name) => self.ident(name),
            Expr::Select(select) => {
                let operand = self.node(&select.operand);
                if select.test {
                    return Node {
                        cost: operand.cost.add(Cost::fixed(PRESENCE_TEST_COST)),
                        ty: Decl::Bool,
                        path: Vec::new(),
                        size: Some(Cost::fixed(1)),
                    };
                }
                let ty = match &operand.ty {
                    Decl::Object(fields) => fields
                        .get(&select.field)
                        .map(|(decl, _)| decl.clone())
                        .unwrap_or_else(|| panic!("no field {:?}", select.field)),
                    Decl::Map(values, _) => (**values).clone(),
                    Decl::Dyn(max) => Decl::Dyn(*max),
                    other => panic!("select {:?} on {other:?}", select.field),
                };
                // Selecting from an object or a map costs one more.
                let step = match operand.ty {
                    Decl::Object(_) | Decl::Map(..) => SELECT_AND_IDENT_COST,
                    _ => 0,
                };
                let mut path = operand.path;
                path.push(select.field.clone());
                self.typed(operand.cost.add(Cost::fixed(step)), ty, path, None)
            }
            Expr::List(list) => {
                let mut cost = Cost::fixed(LIST_CREATE_BASE_COST);
                let mut elem = Decl::Null;
                for item in &list.elements {
                    let item = self.node(item);
                    cost = cost.add(item.cost);
                    elem = item.ty;
                }
                Node {
                    cost,
                    ty: Decl::List(Box::new(elem), list.elements.len() as u64),
                    path: Vec::new(),
                    size: Some(Cost::fixed(list.elements.len() as u64)),
                }
            }
            Expr::Call(call) => self.call(&call.func_name, call.target.as_deref(), &call.args),
            Expr::Comprehension(comp) => {
                let range = self.node(&comp.iter_range);
                let init = self.node(&comp.accu_init);
                assert!(
                    comp.iter_var2.is_none(),
                    "two-variable comprehensions are not modeled"
                );
                let (elem, step) = match &range.ty {
                    Decl::List(elem, _) => ((**elem).clone(), "@items"),
                    Decl::Map(..) => (Decl::String(0), "@keys"),
                    other => panic!("comprehension over {other:?}"),
                };
                let mut iter_path = range.path.clone();
                iter_path.push(step.to_owned());
                let init_is_literal = matches!(comp.accu_init.expr, Expr::Literal(_));
                self.locals.push(Local {
                    name: comp.accu_var.clone(),
                    ty: init.ty.clone(),
                    path: init.path.clone(),
                    size: init.size,
                });
                self.locals.push(Local {
                    name: comp.iter_var.clone(),
                    ty: elem,
                    path: iter_path,
                    size: None,
                });
                let condition = self.node(&comp.loop_cond);
                let step = self.node(&comp.loop_step);
                self.locals.pop();
                let result = self.node(&comp.result);
                self.locals.pop();
                let count = range.size.unwrap_or(Cost::UNKNOWN);
                let cost = range
                    .cost
                    .add(init.cost)
                    .add(result.cost)
                    .add(count.multiply(step.cost.add(condition.cost)));
                let size = if init_is_literal {
                    init.size
                } else {
                    Some(count)
                };
                Node {
                    cost,
                    ty: result.ty,
                    path: Vec::new(),
                    size,
                }
            }
            other => panic!("expression {other:?} is not modeled"),
        }
    }

    fn ident(&mut self, name: &str) -> Node {
        let cost = Cost::fixed(SELECT_AND_IDENT_COST);
        if let Some(local) = self.locals.iter().rev().find(|l| l.name == name) {
            let (ty, path, size) = (local.ty.clone(), local.path.clone(), local.size);
            return self.typed(cost, ty, path, size);
        }
        assert_eq!(name, "self", "unknown variable {name:?}");
        self.typed(cost, self.root.clone(), vec![name.to_owned()], None)
    }

    /// cel-go's `computeSize` for a node that is not a literal: the API
    /// server's estimate by path first, then 1 for scalars, then what a local
    /// variable was bound to.
    fn typed(&self, cost: Cost, ty: Decl, path: Vec<String>, local: Option<Cost>) -> Node {
        let size = self
            .size_by_path(&path)
            .or_else(|| ty.is_scalar().then_some(Cost::fixed(1)))
            .or(local);
        Node {
            cost,
            ty,
            path,
            size,
        }
    }

    /// `sizeEstimator.EstimateSize`: walks the schema from `self`.
    fn size_by_path(&self, path: &[String]) -> Option<Cost> {
        let (_, rest) = path.split_first()?;
        let mut at = self.root.clone();
        for step in rest {
            at = match (&at, step.as_str()) {
                (Decl::List(elem, _), "@items") | (Decl::Map(elem, _), "@values") => {
                    (**elem).clone()
                }
                (Decl::Map(..), "@keys") => Decl::String(0),
                (Decl::Object(fields), name) => fields.get(name)?.0.clone(),
                _ => return None,
            };
        }
        Some(Cost {
            min: 0,
            max: at.max_elements(),
        })
    }

    fn call(&mut self, function: &str, target: Option<&IdedExpr>, args: &[IdedExpr]) -> Node {
        let args: Vec<Node> = args.iter().map(|a| self.node(a)).collect();
        let target = target.map(|t| self.node(t));
        let arg_sum = args.iter().fold(Cost::fixed(0), |sum, a| sum.add(a.cost));
        let target_cost = target.as_ref().map_or(Cost::fixed(0), |t| t.cost);
        let size_of = |n: &Node| n.size.unwrap_or(Cost::UNKNOWN);
        let constant = Cost::fixed(1).add(arg_sum);
        // (cost of the call, its type, its size when the function gives one)
        let (cost, ty, size): (Cost, Decl, Option<Cost>) = match (function, &target) {
            (operators::LOGICAL_AND | operators::LOGICAL_OR, None) => {
                let (lhs, rhs) = (args[0].cost, args[1].cost);
                let cost = Cost {
                    min: lhs.min,
                    max: lhs.max.saturating_add(rhs.max),
                };
                (cost, Decl::Bool, None)
            }
            (operators::CONDITIONAL, None) => {
                let cost = args[0].cost.add(args[1].cost.union(args[2].cost));
                let size = size_of(&args[1]).union(size_of(&args[2]));
                (cost, args[1].ty.clone(), Some(size))
            }
            (operators::LOGICAL_NOT | operators::NOT_STRICTLY_FALSE, None) => {
                (constant, Decl::Bool, None)
            }
            (operators::EQUALS | operators::NOT_EQUALS, None) => {
                (traversal(&args, arg_sum), Decl::Bool, None)
            }
            (
                operators::LESS
                | operators::LESS_EQUALS
                | operators::GREATER
                | operators::GREATER_EQUALS,
                None,
            ) => {
                // Strings are compared by traversal; everything else is one step.
                let cost = if args.iter().all(|a| a.ty.may_be_string()) {
                    traversal(&args, arg_sum).union(constant)
                } else {
                    constant
                };
                (cost, Decl::Bool, None)
            }
            (operators::ADD, None) => match (&args[0].ty, &args[1].ty) {
                (Decl::String(_), Decl::String(_)) => {
                    let size = size_of(&args[0]).add(size_of(&args[1]));
                    let cost = size.by_factor(STRING_TRAVERSAL_COST_FACTOR).add(arg_sum);
                    (cost, Decl::String(size.max), Some(size))
                }
                (Decl::Int | Decl::Uint | Decl::Double, _) => (constant, args[0].ty.clone(), None),
                (l, r) => panic!("_+_ on {l:?} and {r:?} is not modeled"),
            },
            ("string", None) => match &args[0].ty {
                // bytes_to_string traverses; every other conversion is one step,
                // and a dyn argument may be any of them.
                Decl::Bytes(_) | Decl::Dyn(_) => {
                    let sz = size_of(&args[0]);
                    let cost = sz.by_factor(STRING_TRAVERSAL_COST_FACTOR).add(arg_sum);
                    let size = Cost {
                        min: sz.min / 4,
                        max: sz.max,
                    };
                    (cost.union(constant), Decl::String(sz.max), Some(size))
                }
                _ => (constant, Decl::String(0), None),
            },
            ("int", None) => (constant, Decl::Int, None),
            ("size", None) | ("size", Some(_)) => (constant.add(target_cost), Decl::Int, None),
            ("matches", Some(t)) => {
                let string = size_of(t)
                    .add(Cost::fixed(1))
                    .by_factor(STRING_TRAVERSAL_COST_FACTOR);
                let regex = size_of(&args[0]).by_factor(REGEX_STRING_LENGTH_COST_FACTOR);
                (
                    string.multiply(regex).add(arg_sum).add(target_cost),
                    Decl::Bool,
                    None,
                )
            }
            (f, t) => panic!(
                "the CEL function {f:?}{} is not modeled: port its estimate from cel-go checker/cost.go (functionCost) and apiserver pkg/cel/library/cost.go (EstimateCallCost)",
                if t.is_some() { " (as a method)" } else { "" }
            ),
        };
        // cel-go's computeSize for a call with no size of its own: scalars are 1.
        let size = size.or_else(|| ty.is_scalar().then_some(Cost::fixed(1)));
        Node {
            cost,
            ty,
            path: Vec::new(),
            size,
        }
    }
}

/// Equality and string comparison: traverse the shorter side.
fn traversal(args: &[Node], arg_sum: Cost) -> Cost {
    let max = args
        .iter()
        .map(|a| a.size.unwrap_or(Cost::UNKNOWN).max)
        .min()
        .unwrap_or(0);
    Cost {
        min: u64::from(max > 0),
        max,
    }
    .by_factor(STRING_TRAVERSAL_COST_FACTOR)
    .add(arg_sum)
}

fn literal_node(literal: &LiteralValue) -> Node {
    let (ty, size) = match literal {
        LiteralValue::String(s) => (Decl::String(0), s.inner().chars().count() as u64),
        LiteralValue::Bytes(b) => (Decl::Bytes(0), b.inner().len() as u64),
        LiteralValue::Boolean(_) => (Decl::Bool, 1),
        LiteralValue::Int(_) => (Decl::Int, 1),
        LiteralValue::UInt(_) => (Decl::Uint, 1),
        LiteralValue::Double(_) => (Decl::Double, 1),
        LiteralValue::Null => (Decl::Null, 1),
    };
    Node {
        cost: Cost::fixed(0),
        ty,
        path: Vec::new(),
        size: Some(Cost::fixed(size)),
    }
}
