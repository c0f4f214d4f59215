//! `TokenService`: creating, listing and revoking tokens, for callers with the `admin` scope.

use std::sync::Arc;
use std::time::SystemTime;

use sesame_proto::v1::token_service_server::TokenService;
use sesame_proto::v1::{
    CreateTokenRequest, CreateTokenResponse, GetCallerTokenRequest, ListTokensRequest,
    ListTokensResponse, RevokeTokenRequest, Token,
};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::auth::{Action, Gate, Scope};
use crate::sessions::Sessions;
use crate::tokens::{TokenInfo, TokenStore};

/// Serves token management.
pub(crate) struct Tokens {
    pub(crate) gate: Arc<Gate>,
    /// The token store, when the relay checks tokens.
    pub(crate) store: Option<Arc<TokenStore>>,
    /// Who holds which remotes now.
    pub(crate) sessions: Arc<dyn Sessions>,
}

impl Tokens {
    fn store(&self) -> Result<&Arc<TokenStore>, Status> {
        self.store.as_ref().ok_or_else(|| {
            Status::unimplemented("this relay keeps no tokens: it lets every caller in")
        })
    }

    /// The live remotes of a token.
    fn to_proto(&self, info: TokenInfo) -> Token {
        let live_remotes = self.sessions.remotes_held(&info.id);
        let timestamp = |time: Option<SystemTime>| time.map(prost_types::Timestamp::from);
        Token {
            name: format!("tokens/{}", info.id),
            label: info.label,
            scopes: info.scopes.iter().map(Scope::to_string).collect(),
            create_time: timestamp(Some(info.created)),
            expire_time: timestamp(info.expires),
            revoke_time: timestamp(info.revoked),
            owned_names: info.owned_names,
            live_remotes: u32::try_from(live_remotes).unwrap_or(u32::MAX),
        }
    }
}

fn token_id(name: &str) -> Result<&str, Status> {
    name.strip_prefix("tokens/")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            Status::invalid_argument(format!("{name:?} is not a token's name (tokens/ID)"))
        })
}

#[tonic::async_trait]
impl TokenService for Tokens {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let caller = self.gate.authenticate(&request)?;
        caller.check(Action::Admin)?;
        let CreateTokenRequest { scopes, label, ttl } = request.into_inner();
        let scopes = scopes
            .iter()
            .map(|scope| scope.parse::<Scope>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::invalid_argument)?;
        let ttl = match ttl {
            None => None,
            Some(ttl) => Some(
                std::time::Duration::try_from(ttl)
                    .ok()
                    .filter(|ttl| !ttl.is_zero())
                    .ok_or_else(|| Status::invalid_argument("the ttl must be positive"))?,
            ),
        };
        let (info, secret) = self.store()?.create(scopes, label, ttl)?;
        info!(token = %info.id, by = caller.token().unwrap_or("-"), "token created");
        Ok(Response::new(CreateTokenResponse {
            token: Some(self.to_proto(info)),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        self.gate.authenticate(&request)?.check(Action::Admin)?;
        let mut tokens = self.store()?.list();
        tokens.sort_by_key(|info| info.created);
        Ok(Response::new(ListTokensResponse {
            tokens: tokens.into_iter().map(|info| self.to_proto(info)).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let caller = self.gate.authenticate(&request)?;
        caller.check(Action::Admin)?;
        let id = token_id(&request.get_ref().name)?;
        let info = self.store()?.revoke(id)?;
        info!(token = %info.id, by = caller.token().unwrap_or("-"), "token revoked");
        Ok(Response::new(self.to_proto(info)))
    }

    async fn get_caller_token(
        &self,
        request: Request<GetCallerTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        let caller = self.gate.authenticate(&request)?;
        let store = self.store()?;
        let id = caller
            .token()
            .ok_or_else(|| Status::not_found("the call presented no token"))?;
        let info = store
            .get(id)
            .ok_or_else(|| Status::not_found("the token is gone"))?;
        Ok(Response::new(self.to_proto(info)))
    }
}
