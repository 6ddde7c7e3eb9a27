//! Pure model of gangs: pods placed all-or-nothing, with roles and per-role minimums.
