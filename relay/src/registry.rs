//! The registry: which remotes are connected, through which session, exposing which ports.
//!
//! It is a trait so that a cluster of relays can share one (a distributed key-value store);
//! [`MemoryRegistry`] serves a single relay. Methods return boxed futures so that an
//! implementation may wait on the network, and the relay can hold any implementation as
//! `Arc<dyn Registry>`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;
use std::time::SystemTime;

use futures_util::future::{BoxFuture, FutureExt, ready};
use sesame_tunnel::{AgentKey, Error, RemoteName, SessionId};

/// What the registry knows about one connected remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRecord {
    /// The remote's name.
    pub name: RemoteName,
    /// The session that holds the name.
    pub session: SessionId,
    /// The ports the remote exposes, and where the relay publishes each.
    pub ports: BTreeMap<u16, PublicEndpoints>,
    /// When the session began.
    pub connect_time: SystemTime,
    /// The agent's description of itself.
    pub agent_version: String,
    /// The key the agent presented: without tokens, a later session with the same key takes
    /// the name over.
    pub agent_key: Option<AgentKey>,
    /// The id of the token the session registered with: a later session with the same token
    /// takes the name over.
    pub owner: Option<String>,
}

/// Where the relay publishes an exposed port, besides dials: what clients connect to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublicEndpoints {
    /// The port's HTTP virtual host, one URL per public listener (`https://laptop.example.com`).
    pub http_urls: Vec<String>,
    /// The port's public TCP address, `host:port`.
    pub tcp_address: Option<String>,
}

/// Where remotes are registered.
pub trait Registry: Send + Sync + 'static {
    /// Registers `record.name` for `record.session`. When another session holds the name,
    /// takes it over if both presented the same token (or, without tokens, the same agent
    /// key), returning the session it took the
    /// name from (which the relay then ends); otherwise fails with [`Error::NameInUse`].
    fn claim(&self, record: RemoteRecord) -> BoxFuture<'_, Result<Option<SessionId>, Error>>;

    /// Forgets `name` if `session` still holds it.
    fn release<'a>(
        &'a self,
        name: &'a RemoteName,
        session: &'a SessionId,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Records that `name` exposes `port`, published at `endpoints` (or, with `None`, that it
    /// no longer exposes it), if `session` still holds the name. One port at a time, so that
    /// a remote with many ports costs each change the same.
    fn set_port<'a>(
        &'a self,
        name: &'a RemoteName,
        session: &'a SessionId,
        port: u16,
        endpoints: Option<PublicEndpoints>,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Looks up one remote.
    fn get<'a>(
        &'a self,
        name: &'a RemoteName,
    ) -> BoxFuture<'a, Result<Option<RemoteRecord>, Error>>;

    /// Lists up to `limit` remotes in name order, starting after `after`.
    fn list<'a>(
        &'a self,
        after: Option<&'a RemoteName>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RemoteRecord>, Error>>;
}

/// A registry in this process's memory, for a single relay.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    remotes: Mutex<BTreeMap<RemoteName, RemoteRecord>>,
}

impl MemoryRegistry {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<RemoteName, RemoteRecord>) -> T) -> T {
        f(&mut crate::lock(&self.remotes))
    }
}

/// Whether `claim` may take the name over from `holder`: the same token, or without tokens,
/// the same agent by its key.
fn same_agent(holder: &RemoteRecord, claim: &RemoteRecord) -> bool {
    match (&holder.owner, &claim.owner) {
        (Some(held), Some(presented)) => held == presented,
        (None, None) => {
            matches!((&holder.agent_key, &claim.agent_key), (Some(held), Some(presented)) if held == presented)
        }
        _ => false,
    }
}

impl Registry for MemoryRegistry {
    fn claim(&self, record: RemoteRecord) -> BoxFuture<'_, Result<Option<SessionId>, Error>> {
        let result = self.with(|remotes| {
            let stale = match remotes.get(&record.name) {
                None => None,
                Some(holder) if same_agent(holder, &record) => Some(holder.session.clone()),
                Some(_) => {
                    return Err(Error::NameInUse {
                        name: record.name.to_string(),
                    });
                }
            };
            remotes.insert(record.name.clone(), record);
            Ok(stale)
        });
        ready(result).boxed()
    }

    fn release<'a>(
        &'a self,
        name: &'a RemoteName,
        session: &'a SessionId,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.with(|remotes| {
            if remotes.get(name).is_some_and(|r| &r.session == session) {
                remotes.remove(name);
            }
        });
        ready(Ok(())).boxed()
    }

    fn set_port<'a>(
        &'a self,
        name: &'a RemoteName,
        session: &'a SessionId,
        port: u16,
        endpoints: Option<PublicEndpoints>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.with(|remotes| {
            if let Some(record) = remotes.get_mut(name).filter(|r| &r.session == session) {
                match endpoints {
                    Some(endpoints) => record.ports.insert(port, endpoints),
                    None => record.ports.remove(&port),
                };
            }
        });
        ready(Ok(())).boxed()
    }

    fn get<'a>(
        &'a self,
        name: &'a RemoteName,
    ) -> BoxFuture<'a, Result<Option<RemoteRecord>, Error>> {
        ready(Ok(self.with(|remotes| remotes.get(name).cloned()))).boxed()
    }

    fn list<'a>(
        &'a self,
        after: Option<&'a RemoteName>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RemoteRecord>, Error>> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let page = self.with(|remotes| {
            remotes
                .range::<RemoteName, _>((start, Bound::Unbounded))
                .take(limit)
                .map(|(_, record)| record.clone())
                .collect()
        });
        ready(Ok(page)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, session: &SessionId) -> RemoteRecord {
        RemoteRecord {
            name: RemoteName::new(name).unwrap(),
            session: session.clone(),
            ports: BTreeMap::new(),
            connect_time: SystemTime::UNIX_EPOCH,
            agent_version: "test".into(),
            agent_key: None,
            owner: None,
        }
    }

    #[tokio::test]
    async fn the_same_agent_takes_its_name_back() {
        let registry = MemoryRegistry::default();
        let key = AgentKey::generate();
        let (stale, fresh, stranger) = (
            SessionId::generate(),
            SessionId::generate(),
            SessionId::generate(),
        );
        let keyed = |session: &SessionId, key: &AgentKey| RemoteRecord {
            agent_key: Some(key.clone()),
            owner: None,
            ..record("pi", session)
        };
        assert_eq!(registry.claim(keyed(&stale, &key)).await.unwrap(), None);
        let refused = registry
            .claim(keyed(&stranger, &AgentKey::generate()))
            .await;
        assert!(matches!(refused, Err(Error::NameInUse { .. })));
        assert!(matches!(
            registry.claim(record("pi", &stranger)).await,
            Err(Error::NameInUse { .. })
        ));
        let replaced = registry.claim(keyed(&fresh, &key)).await.unwrap();
        assert_eq!(replaced, Some(stale.clone()));

        // The stale session's own release no longer touches the name.
        let pi = RemoteName::new("pi").unwrap();
        registry.release(&pi, &stale).await.unwrap();
        let holder = registry.get(&pi).await.unwrap().unwrap();
        assert_eq!(holder.session, fresh);
    }

    #[tokio::test]
    async fn a_name_has_one_holder_until_released() {
        let registry = MemoryRegistry::default();
        let (first, second) = (SessionId::generate(), SessionId::generate());
        registry.claim(record("pi", &first)).await.unwrap();
        let taken = registry.claim(record("pi", &second)).await.unwrap_err();
        assert!(matches!(taken, Error::NameInUse { name } if name == "pi"));

        let pi = RemoteName::new("pi").unwrap();
        registry.release(&pi, &second).await.unwrap();
        assert!(
            registry.get(&pi).await.unwrap().is_some(),
            "only the holder releases"
        );
        registry.release(&pi, &first).await.unwrap();
        assert!(registry.get(&pi).await.unwrap().is_none());
        registry.claim(record("pi", &second)).await.unwrap();
    }

    #[tokio::test]
    async fn ports_change_only_for_the_holder() {
        let registry = MemoryRegistry::default();
        let holder = SessionId::generate();
        registry.claim(record("pi", &holder)).await.unwrap();
        let pi = RemoteName::new("pi").unwrap();
        let stranger = SessionId::generate();
        let public = Some(PublicEndpoints::default());
        registry
            .set_port(&pi, &stranger, 1, public.clone())
            .await
            .unwrap();
        assert!(registry.get(&pi).await.unwrap().unwrap().ports.is_empty());
        for port in [80, 22, 443] {
            registry
                .set_port(&pi, &holder, port, public.clone())
                .await
                .unwrap();
        }
        registry.set_port(&pi, &holder, 443, None).await.unwrap();
        registry.set_port(&pi, &stranger, 22, None).await.unwrap();
        let ports = registry.get(&pi).await.unwrap().unwrap().ports;
        assert_eq!(ports.into_keys().collect::<Vec<_>>(), [22, 80]);
    }

    #[tokio::test]
    async fn lists_page_through_names_in_order() {
        let registry = MemoryRegistry::default();
        for name in ["c", "a", "e", "b", "d"] {
            registry
                .claim(record(name, &SessionId::generate()))
                .await
                .unwrap();
        }
        let names = |page: Vec<RemoteRecord>| {
            page.into_iter()
                .map(|r| r.name.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(registry.list(None, 2).await.unwrap()), ["a", "b"]);
        let b = RemoteName::new("b").unwrap();
        assert_eq!(
            names(registry.list(Some(&b), 10).await.unwrap()),
            ["c", "d", "e"]
        );
        let z = RemoteName::new("z").unwrap();
        assert!(registry.list(Some(&z), 10).await.unwrap().is_empty());
    }
}
