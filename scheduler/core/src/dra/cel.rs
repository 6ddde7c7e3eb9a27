//! Device selectors in the Kubernetes DRA CEL environment.
//!
//! The `device` variable is a map `{driver, attributes, capacity, allowMultipleAllocations}`
//! where `attributes[domain][id]` and `capacity[domain][id]` hold a device's values
//! (unqualified names belong to the driver's domain, versions are `semver` values,
//! capacities are `quantity` values), and looking up a domain the device does not have
//! gives an empty map. The Kubernetes libraries `quantity()`/`semver()` and `cel.bind`
//! are provided here; the `cel` crate supplies the standard library, optional syntax
//! (`.?x`, `orValue`), string and list extensions.
//!
//! The `cel` crate tracks no evaluation cost, so each expression gets a static
//! worst-case estimate at compile time (collections of a device are bounded by the API:
//! at most 32 attributes, strings of at most 64 characters); an expression whose
//! estimate exceeds upstream's runtime limit of 1,000,000 fails when it is evaluated,
//! as upstream fails when the limit is hit.

use std::any::Any;
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use cel::common::ast::{ComprehensionExpr, Expr, IdedExpr, LiteralValue};
use cel::extractors::{Arguments, This};
use cel::objects::{Key, Map, Opaque};
use cel::parser::Macro;
use cel::{Context, Env, ExecutionError, Program, Value};
use k8s_openapi::api::resource::v1::Device;

use super::quantity::Nanos;

/// Upstream's `resourceapi.CELSelectorExpressionMaxCost`.
pub const COST_LIMIT: u64 = 1_000_000;

/// Why a selector cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectorProblem {
    /// Parse or check error.
    Compile(String),
    /// Worst-case cost estimate above [`COST_LIMIT`].
    Cost(u64),
}

/// A compiled selector: compiled once, evaluated per device.
#[derive(Debug)]
pub struct Selector {
    program: Program,
    /// String literals of the expression: domains it may look up.
    literals: Vec<Arc<String>>,
}

/// Outcome of evaluating one selector on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalError {
    /// Evaluation failed.
    Runtime(String),
    /// The result was not a bool.
    NotBool(String),
}

/// A compiled selector shared between snapshots.
pub type Memoized = Arc<Result<Selector, SelectorProblem>>;

/// The CEL environment shared by all selectors of a snapshot.
pub struct CelEnv {
    env: Env,
    root: Context<'static, 'static>,
    consumable_capacity: bool,
}

impl std::fmt::Debug for CelEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CelEnv").field("consumable_capacity", &self.consumable_capacity).finish()
    }
}

impl CelEnv {
    /// The DRA environment. `device.allowMultipleAllocations` is the device's value when
    /// `multi_alloc` is set, else false (upstream's stable allocator does not pass it).
    pub fn new(multi_alloc: bool) -> Self {
        let env = make_env();
        let mut root = Context::with_env(Arc::new(make_env()));
        let _ = root.add_function("quantity", quantity_fn);
        let _ = root.add_function("isQuantity", |s: Arc<String>| Nanos::parse(&s).is_some());
        let _ = root.add_function("semver", semver_fn);
        let _ = root.add_function("isSemver", is_semver_fn);
        let _ = root.add_function("isLessThan", |This(a): This<Arc<dyn Opaque>>, b: Arc<dyn Opaque>| {
            compare(&a, &b).map(|o| o == Ordering::Less)
        });
        let _ = root.add_function("isGreaterThan", |This(a): This<Arc<dyn Opaque>>, b: Arc<dyn Opaque>| {
            compare(&a, &b).map(|o| o == Ordering::Greater)
        });
        let _ = root.add_function("compareTo", |This(a): This<Arc<dyn Opaque>>, b: Arc<dyn Opaque>| {
            compare(&a, &b).map(|o| o as i64)
        });
        let _ = root.add_function("major", |This(a): This<Arc<dyn Opaque>>| semver_of(&a).map(|v| v.major as i64));
        let _ = root.add_function("minor", |This(a): This<Arc<dyn Opaque>>| semver_of(&a).map(|v| v.minor as i64));
        let _ = root.add_function("patch", |This(a): This<Arc<dyn Opaque>>| semver_of(&a).map(|v| v.patch as i64));
        let _ =
            root.add_function("sign", |This(a): This<Arc<dyn Opaque>>| quantity_of(&a).map(|q| q.0.signum() as i64));
        let _ = root.add_function("isInteger", |This(a): This<Arc<dyn Opaque>>| {
            quantity_of(&a).map(|q| q.0 % 1_000_000_000 == 0 && i64::try_from(q.0 / 1_000_000_000).is_ok())
        });
        let _ = root.add_function("asInteger", |This(a): This<Arc<dyn Opaque>>| {
            let q = quantity_of(&a)?;
            if q.0 % 1_000_000_000 != 0 {
                return Err(ExecutionError::function_error("asInteger", "cannot convert value to integer"));
            }
            i64::try_from(q.0 / 1_000_000_000)
                .map_err(|_| ExecutionError::function_error("asInteger", "cannot convert value to integer"))
        });
        let _ = root.add_function("asApproximateFloat", |This(a): This<Arc<dyn Opaque>>| {
            quantity_of(&a).map(|q| q.0 as f64 / 1e9)
        });
        let _ = root.add_function("add", |This(a): This<Arc<dyn Opaque>>, b: Value| {
            let a = quantity_of(&a)?;
            Ok::<Value, ExecutionError>(qv(a.plus(quantity_arg(&b)?)))
        });
        let _ = root.add_function("sub", |This(a): This<Arc<dyn Opaque>>, b: Value| {
            let a = quantity_of(&a)?;
            Ok::<Value, ExecutionError>(qv(a.minus(quantity_arg(&b)?)))
        });
        CelEnv { env, root, consumable_capacity: multi_alloc }
    }

    /// The shared environment: built once per process (it is immutable).
    pub fn shared(multi_alloc: bool) -> &'static CelEnv {
        static ENVS: OnceLock<[CelEnv; 2]> = OnceLock::new();
        &ENVS.get_or_init(|| [CelEnv::new(false), CelEnv::new(true)])[usize::from(multi_alloc)]
    }

    /// Compiles an expression, memoized per process: snapshots are rebuilt every
    /// scheduling cycle, selectors rarely change. The memo is bounded.
    pub fn compile_cached(&self, expression: &str) -> Memoized {
        static MEMO: OnceLock<Mutex<HashMap<(bool, String), Memoized>>> = OnceLock::new();
        let memo = MEMO.get_or_init(Default::default);
        let key = (self.consumable_capacity, expression.to_string());
        if let Some(c) = memo.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return c.clone();
        }
        let compiled = Arc::new(self.compile(expression));
        let mut m = memo.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= 4096 {
            m.clear();
        }
        m.insert(key, compiled.clone());
        compiled
    }

    /// Compiles one expression and estimates its cost.
    pub fn compile(&self, expression: &str) -> Result<Selector, SelectorProblem> {
        if expression.len() > 10 * 1024 {
            return Err(SelectorProblem::Compile("expression is longer than 10Ki".into()));
        }
        let program = self.env.compile(expression).map_err(|e| SelectorProblem::Compile(e.to_string()))?;
        let cost = estimate(program.expression(), &mut Vec::new());
        if cost.cost > COST_LIMIT {
            return Err(SelectorProblem::Cost(cost.cost));
        }
        let mut lits = BTreeSet::new();
        literals(program.expression(), &mut lits);
        Ok(Selector { program, literals: lits.into_iter().map(Arc::new).collect() })
    }

    /// Evaluates a selector against a device value.
    pub fn eval(&self, sel: &Selector, device: &DeviceValue) -> Result<bool, EvalError> {
        let value = device.with_domains(&sel.literals);
        let mut ctx = self.root.new_inner_scope();
        ctx.add_variable_from_value("device", value);
        match sel.program.execute(&ctx) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(v) => Err(EvalError::NotBool(format!("{:?}", v.type_of()))),
            Err(e) => Err(EvalError::Runtime(e.to_string())),
        }
    }

    /// Builds the `device` variable for a device of `driver`.
    pub fn device_value(&self, driver: &str, device: &Device) -> Result<DeviceValue, String> {
        DeviceValue::build(driver, device, self.consumable_capacity)
    }
}

/// Standard library plus the extensions and macros of the Kubernetes base environment
/// that the crate offers, and `cel.bind`.
fn make_env() -> Env {
    let mut env = Env::stdlib();
    let _ = env.add_extension(cel::extensions::strings);
    let _ = env.add_extension(cel::extensions::lists);
    let _ = env.add_macro(Macro::receiver("bind", 3, bind_macro));
    env
}

/// The `device` variable of one device, built once and reused for every selector.
#[derive(Debug, Clone)]
pub struct DeviceValue {
    driver: Value,
    allow_multiple: Option<Value>,
    attributes: HashMap<Key, Value>,
    capacity: HashMap<Key, Value>,
    full: Value,
}

impl DeviceValue {
    fn build(driver: &str, device: &Device, consumable_capacity: bool) -> Result<Self, String> {
        let mut attributes: HashMap<Key, HashMap<Key, Value>> = HashMap::new();
        for (name, attr) in device.attributes.iter().flatten() {
            let v = if let Some(i) = attr.int {
                Value::Int(i)
            } else if let Some(b) = attr.bool {
                Value::Bool(b)
            } else if let Some(s) = &attr.string {
                Value::String(Arc::new(s.clone()))
            } else if let Some(v) = &attr.version {
                let parsed =
                    Semver::parse(v).ok_or_else(|| format!("attribute {name}: invalid semantic version {v:?}"))?;
                Value::Opaque(Arc::new(parsed))
            } else if let Some(l) = &attr.ints {
                Value::List(Arc::new(l.iter().map(|i| Value::Int(*i)).collect()))
            } else if let Some(l) = &attr.bools {
                Value::List(Arc::new(l.iter().map(|i| Value::Bool(*i)).collect()))
            } else if let Some(l) = &attr.strings {
                Value::List(Arc::new(l.iter().map(|i| Value::String(Arc::new(i.clone()))).collect()))
            } else if let Some(l) = &attr.versions {
                let mut out = Vec::new();
                for v in l {
                    out.push(Value::Opaque(Arc::new(
                        Semver::parse(v).ok_or_else(|| format!("attribute {name}: invalid semantic version {v:?}"))?,
                    )));
                }
                Value::List(Arc::new(out))
            } else {
                return Err(format!("attribute {name}: unsupported attribute value"));
            };
            let (dom, id) = split_name(name, driver);
            attributes.entry(key(dom)).or_default().insert(key(id), v);
        }
        let mut capacity: HashMap<Key, HashMap<Key, Value>> = HashMap::new();
        for (name, cap) in device.capacity.iter().flatten() {
            let q =
                Nanos::of(&cap.value).ok_or_else(|| format!("capacity {name}: invalid quantity {:?}", cap.value.0))?;
            let (dom, id) = split_name(name, driver);
            capacity.entry(key(dom)).or_default().insert(key(id), qv(q));
        }
        let nest = |m: HashMap<Key, HashMap<Key, Value>>| -> HashMap<Key, Value> {
            m.into_iter().map(|(k, v)| (k, Value::Map(Map { map: Arc::new(v) }))).collect()
        };
        let mut dv = DeviceValue {
            driver: Value::String(Arc::new(driver.to_string())),
            allow_multiple: Some(Value::Bool(
                consumable_capacity && device.allow_multiple_allocations.unwrap_or(false),
            )),
            attributes: nest(attributes),
            capacity: nest(capacity),
            full: Value::Null,
        };
        dv.full = dv.assemble(&[]);
        Ok(dv)
    }

    fn assemble(&self, extra: &[Arc<String>]) -> Value {
        let mut attributes = self.attributes.clone();
        let mut capacity = self.capacity.clone();
        for d in extra {
            let k = Key::String(d.clone());
            attributes.entry(k.clone()).or_insert_with(empty_map);
            capacity.entry(k).or_insert_with(empty_map);
        }
        let mut m = HashMap::new();
        m.insert(key("driver"), self.driver.clone());
        if let Some(a) = &self.allow_multiple {
            m.insert(key("allowMultipleAllocations"), a.clone());
        }
        m.insert(key("attributes"), Value::Map(Map { map: Arc::new(attributes) }));
        m.insert(key("capacity"), Value::Map(Map { map: Arc::new(capacity) }));
        Value::Map(Map { map: Arc::new(m) })
    }

    /// The value, with empty maps for domains the expression may look up but the
    /// device lacks (upstream returns an empty map for an unknown domain).
    fn with_domains(&self, literals: &[Arc<String>]) -> Value {
        let missing: Vec<Arc<String>> = literals
            .iter()
            .filter(|l| {
                let k = Key::String((*l).clone());
                !self.attributes.contains_key(&k) || !self.capacity.contains_key(&k)
            })
            .cloned()
            .collect();
        if missing.is_empty() { self.full.clone() } else { self.assemble(&missing) }
    }
}

fn empty_map() -> Value {
    Value::Map(Map { map: Arc::new(HashMap::new()) })
}

fn key(s: &str) -> Key {
    Key::String(Arc::new(s.to_string()))
}

/// Splits a qualified name into (domain, id); a bare id belongs to the driver.
pub fn split_name<'a>(name: &'a str, driver: &'a str) -> (&'a str, &'a str) {
    match name.split_once('/') {
        Some((d, id)) => (d, id),
        None => (driver, name),
    }
}

/// `cel.bind(var, init, body)`: a comprehension over nothing whose accumulator is `var`.
fn bind_macro(
    helper: &mut cel::parser::MacroExprHelper<'_>,
    target: &mut Option<IdedExpr>,
    args: &mut Vec<IdedExpr>,
) -> Result<Option<IdedExpr>, cel::ParseError> {
    match target.as_ref().map(|t| &t.expr) {
        Some(Expr::Ident(n)) if n == "cel" => {}
        _ => return Ok(None),
    }
    let body = args.pop().expect("three arguments");
    let init = args.pop().expect("three arguments");
    let var = args.pop().expect("three arguments");
    let Expr::Ident(name) = var.expr else {
        return Err(helper.new_error(var.id, "cel.bind() variable names must be simple identifiers"));
    };
    let step = helper.next_expr(Expr::Ident(name.clone()));
    let cond = helper.next_expr(Expr::Literal(LiteralValue::Boolean(false.into())));
    let range = helper.next_expr(Expr::List(cel::common::ast::ListExpr::new(Vec::new())));
    let comp = ComprehensionExpr {
        iter_range: range,
        iter_var: "#unused".to_owned(),
        iter_var2: None,
        accu_var: name,
        accu_init: init,
        loop_cond: cond,
        loop_step: step,
        result: body,
    };
    Ok(Some(helper.next_expr(Expr::Comprehension(Box::new(comp)))))
}

fn literals(e: &IdedExpr, out: &mut BTreeSet<String>) {
    walk(e, &mut |x| {
        if let Expr::Literal(LiteralValue::String(s)) = &x.expr {
            out.insert(s.inner().to_string());
        }
    });
}

fn walk(e: &IdedExpr, f: &mut dyn FnMut(&IdedExpr)) {
    f(e);
    match &e.expr {
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk(t, f);
            }
            for a in &c.args {
                walk(a, f);
            }
        }
        Expr::Comprehension(c) => {
            for x in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                walk(x, f);
            }
        }
        Expr::List(l) => l.elements.iter().for_each(|x| walk(x, f)),
        Expr::Map(m) => {
            for en in &m.entries {
                if let cel::common::ast::EntryExpr::MapEntry(me) = &en.expr {
                    walk(&me.key, f);
                    walk(&me.value, f);
                }
            }
        }
        Expr::Select(s) => walk(&s.operand, f),
        Expr::Struct(_) | Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// Worst-case cost and size of a sub-expression.
#[derive(Clone, Copy)]
struct Est {
    cost: u64,
    /// Upper bound on the number of elements (lists, maps) or characters (strings).
    size: u64,
}

/// Bound on collections and strings that come from a device (API limits).
const DEVICE_SIZE: u64 = 64;

fn estimate(e: &IdedExpr, scope: &mut Vec<(String, u64)>) -> Est {
    let sat = |a: u64, b: u64| a.saturating_add(b);
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Est { cost: 0, size: s.inner().len() as u64 },
        Expr::Literal(_) | Expr::Unspecified | Expr::Struct(_) => Est { cost: 0, size: 1 },
        Expr::Ident(n) => {
            let size = scope.iter().rev().find(|(v, _)| v == n).map_or(DEVICE_SIZE, |(_, s)| *s);
            Est { cost: 1, size }
        }
        Expr::Select(s) => {
            let o = estimate(&s.operand, scope);
            Est { cost: sat(o.cost, 1), size: DEVICE_SIZE }
        }
        Expr::List(l) => {
            let mut cost = 10u64;
            for x in &l.elements {
                cost = sat(cost, estimate(x, scope).cost);
            }
            Est { cost, size: l.elements.len() as u64 }
        }
        Expr::Map(m) => {
            let mut cost = 30u64;
            for en in &m.entries {
                if let cel::common::ast::EntryExpr::MapEntry(me) = &en.expr {
                    cost = sat(cost, sat(estimate(&me.key, scope).cost, estimate(&me.value, scope).cost));
                }
            }
            Est { cost, size: m.entries.len() as u64 }
        }
        Expr::Call(c) => {
            let mut cost = 1u64;
            let mut size = 1u64;
            if let Some(t) = &c.target {
                let t = estimate(t, scope);
                cost = sat(cost, t.cost);
                size = size.max(t.size);
            }
            for a in &c.args {
                let a = estimate(a, scope);
                cost = sat(cost, a.cost);
                size = size.max(a.size);
            }
            // String and list operations are linear in their operands.
            let linear = matches!(
                c.func_name.as_str(),
                "matches"
                    | "contains"
                    | "startsWith"
                    | "endsWith"
                    | "_+_"
                    | "@in"
                    | "join"
                    | "split"
                    | "replace"
                    | "lowerAscii"
                    | "upperAscii"
                    | "trim"
                    | "indexOf"
                    | "lastIndexOf"
            );
            if linear {
                cost = sat(cost, size / 10);
            }
            let size = if c.func_name == "_+_" { size.saturating_mul(2) } else { size };
            Est { cost, size }
        }
        Expr::Comprehension(c) => {
            let range = estimate(&c.iter_range, scope);
            let init = estimate(&c.accu_init, scope);
            scope.push((c.iter_var.clone(), DEVICE_SIZE));
            if let Some(v2) = &c.iter_var2 {
                scope.push((v2.clone(), DEVICE_SIZE));
            }
            scope.push((c.accu_var.clone(), init.size.max(range.size)));
            let body = sat(estimate(&c.loop_cond, scope).cost, estimate(&c.loop_step, scope).cost);
            let result = estimate(&c.result, scope);
            scope.truncate(scope.len() - if c.iter_var2.is_some() { 3 } else { 2 });
            let iterations = range.size;
            let cost = sat(sat(range.cost, init.cost), sat(iterations.saturating_mul(sat(body, 1)), result.cost));
            Est { cost, size: result.size.max(range.size) }
        }
    }
}

// ---- quantity() ----

impl Opaque for Nanos {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.Quantity"
    }
}

fn qv(q: Nanos) -> Value {
    Value::Opaque(Arc::new(q))
}

fn quantity_fn(s: Arc<String>) -> Result<Value, ExecutionError> {
    Nanos::parse(&s).map(qv).ok_or_else(|| {
        ExecutionError::function_error(
            "quantity",
            format!("quantities must match the regular expression; invalid quantity {s:?}"),
        )
    })
}

fn quantity_of(a: &Arc<dyn Opaque>) -> Result<Nanos, ExecutionError> {
    (a.as_ref() as &dyn Any).downcast_ref::<Nanos>().copied().ok_or_else(|| {
        ExecutionError::function_error("quantity", format!("no such overload for {}", a.runtime_type_name()))
    })
}

fn quantity_arg(v: &Value) -> Result<Nanos, ExecutionError> {
    match v {
        Value::Int(i) => Ok(Nanos::from_int(i128::from(*i))),
        Value::Opaque(o) => quantity_of(o),
        _ => Err(ExecutionError::function_error("add", "no such overload")),
    }
}

// ---- semver() ----

/// A semantic version (semver 2.0.0), ordered by precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Semver {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<String>,
}

impl Opaque for Semver {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.Semver"
    }
}

impl Semver {
    /// Strict parse: `MAJOR.MINOR.PATCH[-pre][+build]`, no leading zeros.
    pub fn parse(s: &str) -> Option<Semver> {
        let s = s.split_once('+').map_or(s, |(v, b)| if b.is_empty() { "" } else { v });
        let (core, pre) = match s.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (s, None),
        };
        let nums: Vec<&str> = core.split('.').collect();
        if nums.len() != 3 {
            return None;
        }
        let num = |x: &str| -> Option<u64> {
            if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) || (x.len() > 1 && x.starts_with('0')) {
                return None;
            }
            x.parse().ok()
        };
        let pre = match pre {
            None => vec![],
            Some(p) => {
                let parts: Vec<String> = p.split('.').map(str::to_string).collect();
                for x in &parts {
                    if x.is_empty() || !x.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                        return None;
                    }
                    if x.bytes().all(|b| b.is_ascii_digit()) && x.len() > 1 && x.starts_with('0') {
                        return None;
                    }
                }
                parts
            }
        };
        Some(Semver { major: num(nums[0])?, minor: num(nums[1])?, patch: num(nums[2])?, pre })
    }

    /// Lenient parse used by `semver(s, true)`: strips a leading `v`, fills in missing
    /// minor/patch and drops leading zeros.
    fn parse_normalized(s: &str) -> Option<Semver> {
        let s = s.strip_prefix('v').unwrap_or(s);
        let (core, rest) = match s.find(['-', '+']) {
            Some(i) => s.split_at(i),
            None => (s, ""),
        };
        let mut parts: Vec<String> = core
            .split('.')
            .map(|p| {
                let t = p.trim_start_matches('0');
                if t.is_empty() { "0".to_string() } else { t.to_string() }
            })
            .collect();
        while parts.len() < 3 {
            parts.push("0".into());
        }
        Semver::parse(&format!("{}{}", parts.join("."), rest))
    }
}

impl Ord for Semver {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.major, self.minor, self.patch).cmp(&(o.major, o.minor, o.patch)).then_with(|| {
            match (self.pre.is_empty(), o.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    for (a, b) in self.pre.iter().zip(&o.pre) {
                        let c = match (a.parse::<u64>(), b.parse::<u64>()) {
                            (Ok(x), Ok(y)) => x.cmp(&y),
                            (Ok(_), Err(_)) => Ordering::Less,
                            (Err(_), Ok(_)) => Ordering::Greater,
                            (Err(_), Err(_)) => a.cmp(b),
                        };
                        if c != Ordering::Equal {
                            return c;
                        }
                    }
                    self.pre.len().cmp(&o.pre.len())
                }
            }
        })
    }
}

impl PartialOrd for Semver {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

fn string_and_flag(name: &str, args: &[Value]) -> Result<(Arc<String>, bool), ExecutionError> {
    match args {
        [Value::String(s)] => Ok((s.clone(), false)),
        [Value::String(s), Value::Bool(b)] => Ok((s.clone(), *b)),
        _ => Err(ExecutionError::function_error(name, "no such overload")),
    }
}

fn semver_fn(Arguments(args): Arguments) -> Result<Value, ExecutionError> {
    let (s, normalize) = string_and_flag("semver", &args)?;
    let v = if normalize { Semver::parse_normalized(&s) } else { Semver::parse(&s) };
    v.map(|v| Value::Opaque(Arc::new(v)))
        .ok_or_else(|| ExecutionError::function_error("semver", format!("invalid semver {s:?}")))
}

fn is_semver_fn(Arguments(args): Arguments) -> Result<bool, ExecutionError> {
    let (s, normalize) = string_and_flag("isSemver", &args)?;
    Ok(if normalize { Semver::parse_normalized(&s).is_some() } else { Semver::parse(&s).is_some() })
}

fn semver_of(a: &Arc<dyn Opaque>) -> Result<Semver, ExecutionError> {
    (a.as_ref() as &dyn Any).downcast_ref::<Semver>().cloned().ok_or_else(|| {
        ExecutionError::function_error("semver", format!("no such overload for {}", a.runtime_type_name()))
    })
}

fn compare(a: &Arc<dyn Opaque>, b: &Arc<dyn Opaque>) -> Result<Ordering, ExecutionError> {
    if let (Ok(x), Ok(y)) = (quantity_of(a), quantity_of(b)) {
        return Ok(x.cmp(&y));
    }
    if let (Ok(x), Ok(y)) = (semver_of(a), semver_of(b)) {
        return Ok(x.cmp(&y));
    }
    Err(ExecutionError::function_error("compareTo", "no such overload"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::resource::v1::{DeviceAttribute, DeviceCapacity};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn dev() -> Device {
        Device {
            name: "gpu-0".into(),
            attributes: Some(
                [
                    ("model".to_string(), DeviceAttribute { string: Some("h100".into()), ..Default::default() }),
                    (
                        "driverVersion".to_string(),
                        DeviceAttribute { version: Some("1.2.3".into()), ..Default::default() },
                    ),
                    ("std.io/numa".to_string(), DeviceAttribute { int: Some(1), ..Default::default() }),
                ]
                .into(),
            ),
            capacity: Some(
                [("memory".to_string(), DeviceCapacity { value: Quantity("80Gi".into()), request_policy: None })]
                    .into(),
            ),
            ..Default::default()
        }
    }

    fn run(expr: &str) -> Result<bool, String> {
        let env = CelEnv::new(true);
        let sel = env.compile(expr).map_err(|e| format!("{e:?}"))?;
        let d = env.device_value("gpu.x", &dev()).unwrap();
        env.eval(&sel, &d).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn kubernetes_environment() {
        assert_eq!(run("device.driver == 'gpu.x'"), Ok(true));
        assert_eq!(run("device.attributes['gpu.x'].model == 'h100'"), Ok(true));
        assert_eq!(run("device.attributes['std.io'].numa == 1"), Ok(true));
        assert_eq!(run("device.attributes['gpu.x'].driverVersion.isGreaterThan(semver('1.2.0'))"), Ok(true));
        assert_eq!(run("device.attributes['gpu.x'].driverVersion.major() == 1"), Ok(true));
        assert_eq!(run("device.capacity['gpu.x'].memory.compareTo(quantity('40Gi')) > 0"), Ok(true));
        assert_eq!(run("device.capacity['gpu.x'].memory == quantity('80Gi')"), Ok(true));
        assert_eq!(run("device.attributes['other.io'].size() == 0"), Ok(true));
        assert_eq!(run("device.attributes['gpu.x'].?nope.orValue('x') == 'x'"), Ok(true));
        assert_eq!(run("cel.bind(a, device.attributes['gpu.x'], a.model == 'h100')"), Ok(true));
        assert_eq!(run("!device.allowMultipleAllocations"), Ok(true));
        assert_eq!(run("device.attributes['gpu.x'].nope == 1 || true"), Ok(true));
        assert!(run("device.attributes['gpu.x'].nope == 1").is_err());
        assert!(matches!(run("device.driver"), Err(e) if e.contains("NotBool")));
        assert!(matches!(run("device.driver =="), Err(e) if e.contains("Compile")));
        let big = "[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119]";
        let e = format!("{big}.all(x, {big}.all(y, {big}.all(z, x + y + z >= 0)))");
        assert!(matches!(run(&e), Err(m) if m.contains("Cost")));
        assert_eq!(run("[1,2,3].all(x, [1,2,3].all(y, x * y > 0))"), Ok(true));
    }
}
