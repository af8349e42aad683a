//! Request routing: matchit decides which path pattern matches (static >
//! `{param}` > `{*catch_all}`, not file order), then the routes that share
//! that pattern are told apart by method.

use std::sync::Arc;

use asgi_gate_config::Route;
use asgi_gate_filters::compression::Policy as CompressionPolicy;
use asgi_gate_filters::ratelimit::RateLimit;

use http::{HeaderValue, Method};

use crate::steps::auth::AuthSlot;
use crate::steps::static_files::StaticRoute;

/// Where a route sends its requests.
pub enum Target {
    /// The upstream at this index in the gate's upstream list.
    Upstream(usize),
    /// A static route's directory.
    Static(Arc<StaticRoute>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Upstream(i) => f.debug_tuple("Upstream").field(i).finish(),
            Target::Static(_) => f.write_str("Static"),
        }
    }
}

/// A route as the pipeline uses it.
pub struct RouteEntry {
    pub conf: Route,
    /// Where the request goes: a worker, or a static route's files.
    pub target: Target,
    /// Limits keyed by client IP or header: checked before the JWT, so
    /// floods of bad tokens are limited too.
    pub limits_before_auth: Vec<Arc<RateLimit>>,
    /// Limits keyed by a verified claim: checked after the JWT.
    pub limits_after_auth: Vec<Arc<RateLimit>>,
    pub auth: Option<Arc<AuthSlot>>,
    /// `None` when this route does not compress.
    pub compression: Option<Arc<CompressionPolicy>>,
    /// `None` when this route does not cache.
    pub cache: Option<asgi_gate_config::RouteCache>,
    /// The route's `websocket:` limits, if it sets any.
    pub websocket: Option<Arc<crate::steps::websocket::Limits>>,
    /// `None` when the gate does not do CORS on this route.
    pub cors: Option<Arc<asgi_gate_filters::cors::Policy>>,
    /// This route's duration histogram, resolved once (label lookups hash).
    pub duration: Option<prometheus::Histogram>,
    pub requests: crate::metrics::RequestCounters,
}

impl std::fmt::Debug for RouteEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteEntry")
            .field("path", &self.conf.path)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// All routes registered under one path pattern.
#[derive(Debug)]
struct Group {
    routes: Vec<Arc<RouteEntry>>,
    allow: HeaderValue,
}

#[derive(Debug)]
pub struct Router {
    inner: matchit::Router<usize>,
    groups: Vec<Group>,
}

/// Why no route takes a request (`reject.rs` answers 404 or 405).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// No pattern matches the path.
    NotFound,
    /// The path matches, not the method: the `Allow` header value.
    MethodNotAllowed(HeaderValue),
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("route {path}: {source}")]
    Insert {
        path: String,
        source: matchit::InsertError,
    },
    #[error("route {path}: unknown {kind} `{name}`")]
    Unknown {
        path: String,
        kind: &'static str,
        name: String,
    },
    #[error("{0}")]
    Static(#[from] crate::steps::static_files::StaticError),
}

fn allows(route: &Route, method: &Method) -> bool {
    match &route.methods {
        None => true,
        // A GET route answers HEAD too, as Starlette and nginx do.
        Some(ms) => ms
            .iter()
            .any(|m| m == method || (*m == Method::GET && method == Method::HEAD)),
    }
}

fn allow_header(routes: &[Arc<RouteEntry>]) -> HeaderValue {
    let mut names: Vec<&str> = Vec::new();
    for r in routes {
        match &r.conf.methods {
            None => return HeaderValue::from_static("*"),
            Some(ms) => {
                for m in ms {
                    names.push(m.as_str());
                    if *m == Method::GET {
                        names.push("HEAD");
                    }
                }
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    HeaderValue::from_str(&names.join(", ")).unwrap_or(HeaderValue::from_static(""))
}

impl Router {
    /// Builds the router; `make_entry` resolves a route's names (upstream,
    /// limits, auth) into what the pipeline uses.
    pub fn new(
        routes: &[Route],
        make_entry: impl Fn(&Route) -> Result<RouteEntry, RouterError>,
    ) -> Result<Router, RouterError> {
        let mut patterns: Vec<(String, Vec<Arc<RouteEntry>>)> = Vec::new();
        for route in routes {
            let entry = Arc::new(make_entry(route)?);
            match patterns.iter_mut().find(|(p, _)| *p == route.path) {
                Some((_, group)) => group.push(entry),
                None => patterns.push((route.path.clone(), vec![entry])),
            }
        }
        let mut inner = matchit::Router::new();
        let mut groups = Vec::with_capacity(patterns.len());
        for (path, routes) in patterns {
            let id = groups.len();
            inner
                .insert(path.clone(), id)
                .map_err(|source| RouterError::Insert {
                    path: path.clone(),
                    source,
                })?;
            groups.push(Group {
                allow: allow_header(&routes),
                routes,
            });
        }
        // `/api/{*rest}` also answers `/api/`, as a prefix location does in
        // nginx. Added after every explicit pattern, so an explicit route for
        // that path wins and the alias is silently skipped.
        for (id, group) in groups.iter().enumerate() {
            let path = &group.routes[0].conf.path;
            if let Some(idx) = path.rfind("/{*") {
                if path.ends_with('}') {
                    let _ = inner.insert(&path[..=idx], id);
                }
            }
        }
        Ok(Router { inner, groups })
    }

    /// The route for this path and method, or why there is none.
    pub fn find(&self, path: &str, method: &Method) -> Result<&Arc<RouteEntry>, NoRoute> {
        let m = self.inner.at(path).map_err(|_| NoRoute::NotFound)?;
        let group = self.groups.get(*m.value).ok_or(NoRoute::NotFound)?;
        group
            .routes
            .iter()
            .find(|r| allows(&r.conf, method))
            .ok_or_else(|| NoRoute::MethodNotAllowed(group.allow.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use asgi_gate_config::{RouteCors, RouteTarget};

    fn route(path: &str, methods: Option<&[&str]>, upstream: &str) -> Route {
        Route {
            path: path.into(),
            methods: methods.map(|ms| ms.iter().map(|m| m.parse().unwrap()).collect()),
            target: RouteTarget::Upstream(upstream.into()),
            auth: None,
            scopes: vec![],
            rate_limits: vec![],
            compression: None,
            compress_event_stream: false,
            cache: None,
            cors: RouteCors::Inherit,
            websocket: None,
            buffer_request: true,
            buffer_response: None,
        }
    }

    fn upstream(e: &RouteEntry) -> Option<usize> {
        match e.target {
            Target::Upstream(i) => Some(i),
            Target::Static(_) => None,
        }
    }

    /// Upstream `a` is slot 0, `b` slot 1; anything else is unknown.
    fn entry(route: &Route) -> Result<RouteEntry, RouterError> {
        let upstream = match &route.target {
            RouteTarget::Upstream(n) if n == "a" => 0,
            RouteTarget::Upstream(n) if n == "b" => 1,
            _ => {
                return Err(RouterError::Unknown {
                    path: route.path.clone(),
                    kind: "upstream",
                    name: String::new(),
                })
            }
        };
        Ok(RouteEntry {
            conf: route.clone(),
            target: Target::Upstream(upstream),
            limits_before_auth: vec![],
            limits_after_auth: vec![],
            auth: None,
            compression: None,
            cache: None,
            websocket: None,
            cors: None,
            duration: None,
            requests: Default::default(),
        })
    }

    #[test]
    fn most_specific_wins_not_file_order() {
        let r = Router::new(
            &[
                route("/{*rest}", None, "a"),
                route("/api/{*rest}", None, "b"),
                route("/api/health", None, "a"),
            ],
            entry,
        )
        .unwrap();
        assert_eq!(upstream(r.find("/api/x", &Method::GET).unwrap()), Some(1));
        assert_eq!(
            upstream(r.find("/api/health", &Method::GET).unwrap()),
            Some(0)
        );
        assert_eq!(upstream(r.find("/other", &Method::GET).unwrap()), Some(0));
        assert_eq!(upstream(r.find("/", &Method::GET).unwrap()), Some(0));
        assert_eq!(upstream(r.find("/api/", &Method::GET).unwrap()), Some(1));
    }

    #[test]
    fn methods_split_one_pattern_and_405_lists_them() {
        let r = Router::new(
            &[
                route("/items", Some(&["GET"]), "a"),
                route("/items", Some(&["POST", "DELETE"]), "b"),
            ],
            entry,
        )
        .unwrap();
        assert_eq!(upstream(r.find("/items", &Method::GET).unwrap()), Some(0));
        assert_eq!(upstream(r.find("/items", &Method::HEAD).unwrap()), Some(0));
        assert_eq!(upstream(r.find("/items", &Method::POST).unwrap()), Some(1));
        match r.find("/items", &Method::PUT) {
            Err(NoRoute::MethodNotAllowed(allow)) => assert_eq!(allow, "DELETE, GET, HEAD, POST"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.find("/nope", &Method::GET).unwrap_err(),
            NoRoute::NotFound
        );
    }

    #[test]
    fn explicit_root_route_wins_over_catch_all_alias() {
        let r = Router::new(
            &[route("/{*rest}", None, "a"), route("/", None, "b")],
            entry,
        )
        .unwrap();
        assert_eq!(upstream(r.find("/", &Method::GET).unwrap()), Some(1));
        assert_eq!(upstream(r.find("/x", &Method::GET).unwrap()), Some(0));
    }

    #[test]
    fn unknown_upstream_is_an_error() {
        assert!(Router::new(&[route("/x", None, "zzz")], entry).is_err());
    }
}
