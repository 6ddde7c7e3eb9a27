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

/// An attribute value with strings interned per snapshot, so constraints compare
/// integers. `Other` is an attribute with no scalar value (only list forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Compact {
    Int(i64),
    Bool(bool),
    Str(u32),
    Version(u32),
    Other,
}

/// A device's attributes by interned fully qualified name, sorted by name id.
pub(crate) type CompactAttrs = Vec<(u32, Compact)>;

/// Interns attribute names and string values of all devices of a snapshot.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    names: super::hash::FastMap<String, u32>,
    values: super::hash::FastMap<String, u32>,
}

impl Interner {
    fn id(map: &mut super::hash::FastMap<String, u32>, s: &str) -> u32 {
        if let Some(&i) = map.get(s) {
            return i;
        }
        let i = map.len() as u32;
        map.insert(s.to_string(), i);
        i
    }

    /// The id of a fully qualified attribute name, if any device has it.
    pub fn name(&self, full: &str) -> Option<u32> {
        self.names.get(full).copied()
    }

    /// A device's attributes as upstream's lookup sees them: a qualified key wins over
    /// a bare key of the driver's own domain.
    pub fn device(&mut self, device: &Device, driver: &str) -> CompactAttrs {
        let mut out: Vec<(u32, Compact, bool)> = Vec::new();
        for (k, a) in device.attributes.iter().flatten() {
            let (full, qualified) = if k.contains('/') { (k.clone(), true) } else { (format!("{driver}/{k}"), false) };
            let id = Self::id(&mut self.names, &full);
            let v = if let Some(s) = &a.string {
                Compact::Str(Self::id(&mut self.values, s))
            } else if let Some(i) = a.int {
                Compact::Int(i)
            } else if let Some(b) = a.bool {
                Compact::Bool(b)
            } else if let Some(v) = &a.version {
                Compact::Version(Self::id(&mut self.values, v))
            } else {
                Compact::Other
            };
            match out.iter_mut().find(|(i, ..)| *i == id) {
                Some(e) if qualified => *e = (id, v, true),
                Some(_) => {}
                None => out.push((id, v, qualified)),
            }
        }
        let mut out: CompactAttrs = out.into_iter().map(|(i, v, _)| (i, v)).collect();
        out.sort_unstable_by_key(|(i, _)| *i);
        out
    }
}

fn find(attrs: &[(u32, Compact)], id: Option<u32>) -> Option<Compact> {
    let id = id?;
    attrs.binary_search_by_key(&id, |(i, _)| *i).ok().map(|k| attrs[k].1)
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
    /// All covered devices share one value (the first covered device fixes it).
    Match { scope: Scope, attribute: Option<u32>, value: Option<Compact>, count: usize },
    /// All covered devices have pairwise different values. With `per_request` set it
    /// reproduces upstream v0.36's bug (kubernetes/kubernetes#140438): one remembered
    /// value per request name, so a request's later device is only compared with the
    /// latest device of the same request; used by the differential test only.
    Distinct { scope: Scope, attribute: Option<u32>, values: Vec<(String, Compact)>, per_request: bool },
}

impl Constraint {
    /// Tries to add a device (given by its interned attributes); returns false (and
    /// changes nothing) if it would violate the constraint.
    pub fn add(&mut self, request: &str, sub: Option<&str>, attrs: &[(u32, Compact)]) -> bool {
        match self {
            Constraint::Match { scope, attribute, value, count } => {
                if !scope.covers(request, sub) {
                    return true;
                }
                let Some(v) = find(attrs, *attribute) else { return false };
                if *count == 0 {
                    *value = Some(v);
                } else if v == Compact::Other || *value != Some(v) {
                    return false;
                }
                *count += 1;
                true
            }
            Constraint::Distinct { scope, attribute, values, per_request } => {
                if !scope.covers(request, sub) {
                    return true;
                }
                let Some(v) = find(attrs, *attribute) else { return false };
                if !values.is_empty() && (v == Compact::Other || values.iter().any(|(_, x)| *x == v)) {
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
