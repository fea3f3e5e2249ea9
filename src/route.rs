//! Stage 2, route: (host, method, path) → the one [`Route`] that handles a request, or why none
//! does. Paths are matched as they arrive, byte for byte: exact paths through a hash map,
//! prefixes longest first. The route names the upstream; nothing in the request can.

use std::collections::HashMap;

use http::Method;

use crate::ruleset::Route;

/// All routes of a rule set with their lookup indexes.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Exact path (route path or alias) → candidate route indexes, in file order.
    exact: HashMap<Box<str>, Vec<usize>>,
    /// (prefix, route index), longest prefix first.
    prefixes: Vec<(Box<str>, usize)>,
}

/// The outcome of a lookup.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// The route, and where in the request path the part to append to the route's
    /// `upstream_path` begins (the path's length for exact routes).
    Found(&'a Route, usize),
    /// A route exists for the path and host, but not for this method.
    MethodNotAllowed(&'a Route),
    NotFound,
}

impl RouteTable {
    /// Adds a route reachable by `exact` paths or by `prefixes`.
    pub fn push(&mut self, route: Route, exact: Vec<String>, prefixes: Vec<String>) {
        let i = self.routes.len();
        self.routes.push(route);
        for p in exact {
            self.exact.entry(p.into_boxed_str()).or_default().push(i);
        }
        for p in prefixes {
            self.prefixes.push((p.into_boxed_str(), i));
        }
        self.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Which routes share a path with route `i`'s exact paths: used at compile time to refuse
    /// ambiguous route sets.
    pub fn exact_paths(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.exact.iter().map(|(p, v)| (&**p, v.as_slice()))
    }

    pub fn prefix_paths(&self) -> &[(Box<str>, usize)] {
        &self.prefixes
    }

    /// Finds the route for a request. `host` is without port.
    pub fn find(&self, host: &str, method: &Method, path: &str) -> Lookup<'_> {
        let mut wrong_method = None;
        if let Some(cands) = self.exact.get(path) {
            for &i in cands {
                let r = &self.routes[i];
                if !r.serves_host(host) {
                    continue;
                }
                if allows(r, method) {
                    return Lookup::Found(r, path.len());
                }
                wrong_method.get_or_insert(r);
            }
        }
        for (prefix, i) in &self.prefixes {
            if !path.starts_with(&**prefix) {
                continue;
            }
            let r = &self.routes[*i];
            if !r.serves_host(host) {
                continue;
            }
            if allows(r, method) {
                return Lookup::Found(r, prefix.len());
            }
            wrong_method.get_or_insert(r);
        }
        match wrong_method {
            Some(r) => Lookup::MethodNotAllowed(r),
            None => Lookup::NotFound,
        }
    }

    /// The route for a path whatever the method (CORS preflight asks before it sends).
    pub fn find_any_method<'a>(&'a self, host: &str, path: &str) -> Option<&'a Route> {
        let exact = self.exact.get(path).into_iter().flatten().copied();
        let prefix = self
            .prefixes
            .iter()
            .filter(|(p, _)| path.starts_with(&**p))
            .map(|(_, i)| *i);
        exact
            .chain(prefix)
            .map(|i| &self.routes[i])
            .find(|r| r.serves_host(host))
    }
}

/// `HEAD` is allowed wherever `GET` is.
fn allows(r: &Route, m: &Method) -> bool {
    r.methods.contains(m) || (*m == Method::HEAD && r.methods.contains(&Method::GET))
}
