//! The OIDC verifier: one or more trusted issuers, each with its own keys (discovery, JWKS URL,
//! file or inline), algorithm allow-list, audiences, access-token rules and claims mapping.
//!
//! Promise: an identity comes out only for a token whose `iss` is configured, whose algorithm is on
//! that issuer's list, whose signature verifies under one of that issuer's published keys, that
//! is an access token by the issuer's rules, within its validity window (with leeway), and for one
//! of our audiences. Keys are cached; an unknown `kid` triggers a refetch at most once per
//! `min_refresh_interval_secs`; stale keys are refreshed in the background. If no keys can be
//! obtained the answer is `ProviderUnavailable` (fail closed).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use gatehouse_core::{
    AuthError, AuthErrorKind, AuthMethod, Authenticator, BoxFuture, Credential, Identity,
};
use serde::Deserialize;

use crate::IdentityError;
use crate::claims;
use crate::clock::{Clock, SystemClock};
use crate::config::{JwksSource, OidcProviderConfig};
use crate::http::HttpFetcher;
use crate::jwks::{KeySelection, KeySet};
use crate::token::{DEFAULT_MAX_TOKEN_BYTES, UnverifiedJwt};

fn err(kind: AuthErrorKind, detail: impl Into<String>) -> AuthError {
    AuthError::new(kind, detail)
}

/// Keys as last loaded, with when.
#[derive(Debug, Clone)]
struct CachedKeys {
    set: Arc<KeySet>,
    loaded_at: Instant,
    generation: u64,
}

/// One trusted issuer and its key cache.
#[derive(Debug)]
struct IssuerState {
    config: OidcProviderConfig,
    method: AuthMethod,
    fetcher: Option<HttpFetcher>,
    keys: RwLock<Option<CachedKeys>>,
    /// When a load was last attempted (success or failure): the rate limit's reference point.
    last_attempt: Mutex<Option<Instant>>,
    /// Serialises loads, so concurrent misses cause one fetch.
    load_lock: tokio::sync::Mutex<()>,
    background_refresh: AtomicBool,
    loads: AtomicU64,
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

impl IssuerState {
    fn new(config: OidcProviderConfig, method: AuthMethod) -> Result<Self, IdentityError> {
        config.validate()?;
        let fetcher = match config.jwks {
            JwksSource::Discovery | JwksSource::Url { .. } => Some(HttpFetcher::new(
                config.ca_file.as_deref(),
                config.allow_insecure_loopback_http,
                Duration::from_secs(config.http_timeout_secs.max(1)),
            )?),
            JwksSource::File { .. } | JwksSource::Inline { .. } => None,
        };
        let state = IssuerState {
            config,
            method,
            fetcher,
            keys: RwLock::new(None),
            last_attempt: Mutex::new(None),
            load_lock: tokio::sync::Mutex::new(()),
            background_refresh: AtomicBool::new(false),
            loads: AtomicU64::new(0),
        };
        // Local key sources are loaded now, so a bad file fails at startup, not at first login.
        if let JwksSource::File { .. } | JwksSource::Inline { .. } = state.config.jwks {
            let set = state.load_local()?;
            state.store(set);
        }
        Ok(state)
    }

    fn current(&self) -> Option<CachedKeys> {
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn store(&self, set: KeySet) -> CachedKeys {
        let mut slot = self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let generation = slot.as_ref().map_or(1, |k| k.generation + 1);
        let cached = CachedKeys {
            set: Arc::new(set),
            loaded_at: Instant::now(),
            generation,
        };
        *slot = Some(cached.clone());
        cached
    }

    fn load_local(&self) -> Result<KeySet, IdentityError> {
        match &self.config.jwks {
            JwksSource::File { path } => {
                let bytes = std::fs::read(path).map_err(|source| IdentityError::Io {
                    path: path.clone(),
                    source,
                })?;
                KeySet::from_jwks_json(&bytes)
            }
            JwksSource::Inline { jwks } => KeySet::from_jwks_json(jwks.as_bytes()),
            JwksSource::Discovery | JwksSource::Url { .. } => Err(IdentityError::Config(
                "remote key source loaded as local".into(),
            )),
        }
    }

    async fn load_remote(&self) -> Result<KeySet, IdentityError> {
        let fetcher = self.fetcher.as_ref().ok_or_else(|| {
            IdentityError::Config("no HTTP client for a remote key source".into())
        })?;
        let jwks_url = match &self.config.jwks {
            JwksSource::Url { url } => url.clone(),
            _ => {
                let url = self.config.discovery_url();
                let body = fetcher.get(&url).await?;
                let doc: DiscoveryDocument =
                    serde_json::from_slice(&body).map_err(|e| IdentityError::Discovery {
                        issuer: self.config.issuer.clone(),
                        reason: e.to_string(),
                    })?;
                // OIDC Discovery §4.3: the document must name exactly the issuer we asked.
                if doc.issuer != self.config.issuer {
                    return Err(IdentityError::Discovery {
                        issuer: self.config.issuer.clone(),
                        reason: "the document names another issuer".into(),
                    });
                }
                crate::http::check_url(&doc.jwks_uri, self.config.allow_insecure_loopback_http)?;
                doc.jwks_uri
            }
        };
        let body = fetcher.get(&jwks_url).await?;
        KeySet::from_jwks_json(&body)
    }

    /// Loads keys unless someone else did since `seen_generation`, or the rate limit says no
    /// (then the current keys, possibly none, are returned unchanged).
    async fn reload(
        &self,
        seen_generation: Option<u64>,
    ) -> Result<Option<CachedKeys>, IdentityError> {
        let _single_flight = self.load_lock.lock().await;
        let current = self.current();
        if current.as_ref().map(|k| k.generation) != seen_generation {
            return Ok(current);
        }
        {
            let mut last = self
                .last_attempt
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let min = Duration::from_secs(self.config.min_refresh_interval_secs);
            if let Some(at) = *last
                && at.elapsed() < min
            {
                return Ok(current);
            }
            *last = Some(Instant::now());
        }
        self.loads.fetch_add(1, Ordering::Relaxed);
        let loaded = match self.config.jwks {
            JwksSource::File { .. } | JwksSource::Inline { .. } => self.load_local(),
            JwksSource::Discovery | JwksSource::Url { .. } => self.load_remote().await,
        };
        match loaded {
            Ok(set) => Ok(Some(self.store(set))),
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, error = %e, "loading signing keys failed");
                Err(e)
            }
        }
    }

    /// Starts a background refresh when the keys are older than the refresh interval.
    fn refresh_if_stale(self: &Arc<Self>, cached: &CachedKeys) {
        let interval = Duration::from_secs(self.config.refresh_interval_secs);
        if cached.loaded_at.elapsed() < interval
            || matches!(self.config.jwks, JwksSource::Inline { .. })
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.background_refresh.swap(true, Ordering::AcqRel) {
            return;
        }
        let state = Arc::clone(self);
        let generation = cached.generation;
        runtime.spawn(async move {
            // Failure keeps the cached keys; it is logged in `reload`.
            let _ = state.reload(Some(generation)).await;
            state.background_refresh.store(false, Ordering::Release);
        });
    }
}

/// Verifies OIDC JWT access tokens from the configured issuers.
#[derive(Debug)]
pub struct OidcAuthenticator {
    issuers: HashMap<String, Arc<IssuerState>>,
    max_token_bytes: usize,
    clock: Arc<dyn Clock>,
}

impl OidcAuthenticator {
    /// A verifier for `providers`. Local key sources (file, inline) are loaded now; remote ones at
    /// first use (or by [`OidcAuthenticator::warm_up`]).
    pub fn new(providers: Vec<OidcProviderConfig>) -> Result<Self, IdentityError> {
        let mut this = OidcAuthenticator {
            issuers: HashMap::new(),
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            clock: Arc::new(SystemClock),
        };
        for config in providers {
            this.add_issuer(config, AuthMethod::Oidc)?;
        }
        Ok(this)
    }

    pub(crate) fn add_issuer(
        &mut self,
        config: OidcProviderConfig,
        method: AuthMethod,
    ) -> Result<(), IdentityError> {
        if self.issuers.contains_key(&config.issuer) {
            return Err(IdentityError::Config(format!(
                "issuer {} is configured twice",
                config.issuer
            )));
        }
        let issuer = config.issuer.clone();
        self.issuers
            .insert(issuer, Arc::new(IssuerState::new(config, method)?));
        Ok(())
    }

    /// Trusts the local dev issuer too (its tokens get [`AuthMethod::DevIssuer`]).
    pub fn with_dev_issuer(mut self, dev: &crate::DevIssuer) -> Result<Self, IdentityError> {
        self.add_issuer(dev.provider_config()?, AuthMethod::DevIssuer)?;
        Ok(self)
    }

    /// Sets the largest token accepted (checked before any decoding).
    pub fn with_max_token_bytes(mut self, max: usize) -> Self {
        self.max_token_bytes = max;
        self
    }

    /// Sets the clock used for `exp`, `nbf` and `iat`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Loads every issuer's keys now; the first error is returned (the others still load).
    pub async fn warm_up(&self) -> Result<(), IdentityError> {
        let mut first_error = None;
        for state in self.issuers.values() {
            let seen = state.current().map(|k| k.generation);
            if let Err(e) = state.reload(seen).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// How many key loads were attempted for `issuer` (observability; rate-limit tests).
    pub fn key_loads(&self, issuer: &str) -> Option<u64> {
        self.issuers
            .get(issuer)
            .map(|s| s.loads.load(Ordering::Relaxed))
    }

    /// Verifies a JWT and maps its claims to an identity.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let jwt = UnverifiedJwt::parse(token, self.max_token_bytes)?;
        let issuer = jwt
            .issuer()
            .ok_or_else(|| err(AuthErrorKind::WrongIssuer, "token has no `iss` claim"))?;
        // The unverified `iss` only chooses whose keys to try; it is never echoed.
        let state = self
            .issuers
            .get(issuer)
            .ok_or_else(|| err(AuthErrorKind::WrongIssuer, "issuer is not trusted"))?;
        let alg = jwt.header.alg;
        if !state.config.algorithms.contains(&alg) {
            return Err(err(
                AuthErrorKind::AlgorithmNotAllowed,
                format!("{alg} is not allowed for this issuer"),
            ));
        }
        let keys = self.keys_for(state, &jwt).await?;
        let key = match keys.set.select(jwt.header.kid.as_deref(), alg) {
            KeySelection::Found(key) => key,
            KeySelection::Unknown => {
                return Err(err(
                    AuthErrorKind::UnknownKey,
                    "no published key matches the token",
                ));
            }
            KeySelection::AlgorithmMismatch => {
                return Err(err(
                    AuthErrorKind::AlgorithmNotAllowed,
                    format!("the key named by the token does not verify {alg}"),
                ));
            }
        };
        let valid = jsonwebtoken::crypto::verify(
            jwt.signature_b64,
            jwt.signing_input.as_bytes(),
            &key.key,
            alg.to_jsonwebtoken(),
        )
        .unwrap_or(false);
        if !valid {
            return Err(err(
                AuthErrorKind::BadSignature,
                "signature does not verify",
            ));
        }
        check_claims(&state.config, state.method, &jwt, self.clock.now())
    }

    /// The issuer's keys, reloading when the token names a `kid` we do not have (rate-limited).
    async fn keys_for(
        &self,
        state: &Arc<IssuerState>,
        jwt: &UnverifiedJwt<'_>,
    ) -> Result<CachedKeys, AuthError> {
        let cached = match state.current() {
            Some(cached) => cached,
            None => match state.reload(None).await {
                Ok(Some(cached)) => cached,
                Ok(None) => {
                    return Err(err(
                        AuthErrorKind::ProviderUnavailable,
                        "signing keys not loaded yet; retry shortly",
                    ));
                }
                Err(e) => return Err(AuthError::from(&e)),
            },
        };
        state.refresh_if_stale(&cached);
        let missing = match jwt.header.kid.as_deref() {
            Some(kid) => !cached.set.contains_kid(kid),
            None => false,
        };
        if !missing {
            return Ok(cached);
        }
        match state.reload(Some(cached.generation)).await {
            Ok(Some(fresh)) => Ok(fresh),
            // The provider being down does not make a known-bad kid any better.
            Ok(None) | Err(_) => Ok(cached),
        }
    }
}

/// Everything after the signature: token type, validity window, audience, client, mapping.
fn check_claims(
    config: &OidcProviderConfig,
    method: AuthMethod,
    jwt: &UnverifiedJwt<'_>,
    now: gatehouse_core::Timestamp,
) -> Result<Identity, AuthError> {
    let c = &jwt.claims;
    let rules = &config.access_token;
    if !rules.accept_id_tokens {
        if rules.require_type {
            let typ_ok = jwt.header.typ.as_deref().is_some_and(|typ| {
                rules
                    .accepted_types
                    .iter()
                    .any(|accepted| accepted.eq_ignore_ascii_case(typ))
            });
            if !typ_ok {
                return Err(err(
                    AuthErrorKind::WrongTokenType,
                    "an access token (typ at+jwt) is required",
                ));
            }
        }
        if claims::has_id_token_markers(c) {
            return Err(err(
                AuthErrorKind::WrongTokenType,
                "an ID token is not accepted as an access token",
            ));
        }
    }

    let malformed_date = |name: &str| {
        err(
            AuthErrorKind::Malformed,
            format!("`{name}` is not a number"),
        )
    };
    let now_unix = now.unix_timestamp();
    let leeway = i64::try_from(config.leeway_secs).unwrap_or(i64::MAX);
    let exp = claims::numeric_date(c, "exp")
        .map_err(|_| malformed_date("exp"))?
        .ok_or_else(|| err(AuthErrorKind::Malformed, "token has no `exp` claim"))?;
    if now_unix >= exp.saturating_add(leeway) {
        return Err(err(AuthErrorKind::Expired, ""));
    }
    if let Some(nbf) = claims::numeric_date(c, "nbf").map_err(|_| malformed_date("nbf"))?
        && nbf > now_unix.saturating_add(leeway)
    {
        return Err(err(AuthErrorKind::NotYetValid, "`nbf` is in the future"));
    }
    if let Some(iat) = claims::numeric_date(c, "iat").map_err(|_| malformed_date("iat"))?
        && iat > now_unix.saturating_add(leeway)
    {
        return Err(err(AuthErrorKind::NotYetValid, "`iat` is in the future"));
    }

    if !claims::audience_matches(c, &config.audiences) {
        return Err(err(
            AuthErrorKind::WrongAudience,
            format!("expected audience {}", config.audiences.join(" or ")),
        ));
    }
    if !rules.allowed_clients.is_empty() {
        let client = c
            .get("azp")
            .and_then(serde_json::Value::as_str)
            .or_else(|| c.get("client_id").and_then(serde_json::Value::as_str));
        if !client.is_some_and(|id| rules.allowed_clients.iter().any(|a| a == id)) {
            return Err(err(
                AuthErrorKind::WrongTokenType,
                "token was issued to a client that is not allowed",
            ));
        }
    }

    let subject = claims::lookup(c, &config.claims.subject)
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            err(
                AuthErrorKind::Malformed,
                format!("subject claim `{}` missing", config.claims.subject),
            )
        })?;
    let groups = config
        .claims
        .groups
        .as_deref()
        .map(|path| claims::groups(c, path))
        .unwrap_or_default();
    let mut extra = BTreeMap::new();
    for path in &config.claims.extra {
        if let Some(value) = claims::lookup(c, path) {
            extra.insert(path.clone(), value.clone());
        }
    }
    let expires_at = time::OffsetDateTime::from_unix_timestamp(exp)
        .map_err(|_| err(AuthErrorKind::Malformed, "`exp` is out of range"))?;
    Ok(Identity {
        subject: subject.to_string(),
        issuer: config.issuer.clone(),
        groups,
        expires_at: Some(expires_at),
        method,
        claims: extra,
    })
}

impl Authenticator for OidcAuthenticator {
    fn authenticate<'a>(
        &'a self,
        credential: &'a Credential,
    ) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async move {
            match credential.token() {
                Some(token) => self.verify(token).await,
                None => Err(err(
                    AuthErrorKind::Unsupported,
                    "a bearer token is required",
                )),
            }
        })
    }
}
