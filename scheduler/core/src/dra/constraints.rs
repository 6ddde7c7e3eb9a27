//! Claim constraints: matchAttribute and distinctAttribute.

use std::collections::HashSet;

use k8s_openapi::api::resource::v1::{Device, DeviceAttribute};

/// An attribute value as compared by constraints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AttrValue {
    /// `int`
    Int(i64),
    /// `bool`
    Bool(bool),
    /// `string`
    Str(String),
    /// `version`, compared as a string (semver requires the minimal form).
    Version(String),
}

impl AttrValue {
    fn of(a: &DeviceAttribute) -> Option<AttrValue> {
        if let Some(s) = &a.string {
            Some(AttrValue::Str(s.clone()))
        } else if let Some(i) = a.int {
            Some(AttrValue::Int(i))
        } else if let Some(b) = a.bool {
            Some(AttrValue::Bool(b))
        } else {
            a.version.as_ref().map(|v| AttrValue::Version(v.clone()))
        }
    }
}

/// A borrowed attribute value, compared without copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttrRef<'a> {
    Int(i64),
    Bool(bool),
    Str(&'a str),
    Version(&'a str),
}

impl AttrRef<'_> {
    fn of(a: &DeviceAttribute) -> Option<AttrRef<'_>> {
        if let Some(s) = &a.string {
            Some(AttrRef::Str(s))
        } else if let Some(i) = a.int {
            Some(AttrRef::Int(i))
        } else if let Some(b) = a.bool {
            Some(AttrRef::Bool(b))
        } else {
            a.version.as_deref().map(AttrRef::Version)
        }
    }

    fn owned(self) -> AttrValue {
        match self {
            AttrRef::Int(i) => AttrValue::Int(i),
            AttrRef::Bool(b) => AttrValue::Bool(b),
            AttrRef::Str(s) => AttrValue::Str(s.to_string()),
            AttrRef::Version(v) => AttrValue::Version(v.to_string()),
        }
    }

    fn is(self, v: &AttrValue) -> bool {
        match (self, v) {
            (AttrRef::Int(a), AttrValue::Int(b)) => a == *b,
            (AttrRef::Bool(a), AttrValue::Bool(b)) => a == *b,
            (AttrRef::Str(a), AttrValue::Str(b)) => a == b,
            (AttrRef::Version(a), AttrValue::Version(b)) => a == b,
            _ => false,
        }
    }
}

fn lookup_ref<'d>(device: &'d Device, driver: &str, name: &str) -> Option<AttrRef<'d>> {
    let attrs = device.attributes.as_ref()?;
    let a = attrs.get(name).or_else(|| {
        let (domain, id) = name.split_once('/')?;
        if domain == driver { attrs.get(id) } else { None }
    })?;
    AttrRef::of(a)
}

/// Looks up a fully qualified attribute; a device may publish its own driver's
/// attributes without the domain. `Err(())` means present but of no known scalar type.
pub fn lookup(device: &Device, driver: &str, name: &str) -> Option<Result<AttrValue, ()>> {
    let attrs = device.attributes.as_ref()?;
    let a = attrs.get(name).or_else(|| {
        let (domain, id) = name.split_once('/')?;
        if domain == driver { attrs.get(id) } else { None }
    })?;
    Some(AttrValue::of(a).ok_or(()))
}

/// Which requests a constraint covers.
#[derive(Debug, Clone)]
pub(crate) struct Scope(HashSet<String>);

impl Scope {
    pub fn new(requests: Option<&Vec<String>>) -> Scope {
        Scope(requests.map(|r| r.iter().cloned().collect()).unwrap_or_default())
    }
    pub fn covers(&self, request: &str, sub: Option<&str>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        match sub {
            None => self.0.contains(request),
            Some(s) => self.0.contains(request) || self.0.contains(&format!("{request}/{s}")),
        }
    }
}

/// A constraint's state during one allocation attempt.
#[derive(Debug, Clone)]
pub(crate) enum Constraint {
    /// All covered devices share one value.
    Match { scope: Scope, attribute: String, value: Option<AttrValue>, count: usize },
    /// All covered devices have pairwise different values. With `per_request` set it
    /// reproduces upstream v0.36's bug (kubernetes/kubernetes#140438): one remembered
    /// value per request name, so a request's later device is only compared with the
    /// latest device of the same request; used by the differential test only.
    Distinct { scope: Scope, attribute: String, values: Vec<(String, AttrValue)>, per_request: bool },
}

impl Constraint {
    /// Tries to add a device; returns false (and changes nothing) if it would violate
    /// the constraint.
    pub fn add(&mut self, request: &str, sub: Option<&str>, device: &Device, driver: &str) -> bool {
        match self {
            Constraint::Match { scope, attribute, value, count } => {
                if !scope.covers(request, sub) {
                    return true;
                }
                let Some(v) = lookup_ref(device, driver, attribute) else { return false };
                if *count == 0 {
                    *value = Some(v.owned());
                } else if !value.as_ref().is_some_and(|x| v.is(x)) {
                    return false;
                }
                *count += 1;
                true
            }
            Constraint::Distinct { scope, attribute, values, per_request } => {
                if !scope.covers(request, sub) {
                    return true;
                }
                let Some(Ok(v)) = lookup(device, driver, attribute) else { return false };
                if values.iter().any(|(_, x)| *x == v) {
                    return false;
                }
                if *per_request {
                    values.retain(|(r, _)| r != request);
                }
                values.push((request.to_string(), v));
                true
            }
        }
    }

    /// Undoes the last successful `add` of a covered device.
    pub fn remove(&mut self, request: &str, sub: Option<&str>) {
        match self {
            Constraint::Match { scope, value, count, .. } => {
                if scope.covers(request, sub) {
                    *count -= 1;
                    if *count == 0 {
                        *value = None;
                    }
                }
            }
            Constraint::Distinct { scope, values, per_request, .. } => {
                if scope.covers(request, sub) {
                    if *per_request {
                        values.retain(|(r, _)| r != request);
                    } else {
                        values.pop();
                    }
                }
            }
        }
    }
}
