//! `switchyard.v1.Tokens`: bearer tokens (admin) and "who am I".

use super::*;

/// `switchyard.v1.Tokens`: bearer tokens over the API (admin), and "who am I".
pub struct TokensService {
    control: Arc<Control>,
}

impl TokensService {
    pub fn new(control: Arc<Control>) -> Self {
        Self { control }
    }

    /// Run `f` on the token store off the async workers.
    async fn tokens<T: Send + 'static>(
        &self,
        f: impl FnOnce(crate::auth::Tokens<'_>) -> Result<T, crate::auth::TokenError> + Send + 'static,
    ) -> Result<T, Status> {
        use crate::auth::TokenError as E;
        let store = self.control.store();
        tokio::task::spawn_blocking(move || f(crate::auth::Tokens::new(&*store)))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                E::Invalid(_) | E::Ambiguous(_) => Status::invalid_argument(e.to_string()),
                E::NotFound(_) => Status::not_found(e.to_string()),
                E::Random(_) | E::Store(_) | E::Corrupt { .. } => {
                    tracing::error!(error = %e, "token store");
                    Status::internal(format!("nothing was changed: {e}"))
                }
            })
    }

    async fn audit(&self, actor: &str, subject: String, summary: String) {
        use crate::brain::audit::{AuditDraft, AuditKind};
        let draft = AuditDraft::new(
            crate::model::now_unix_ms(),
            actor,
            AuditKind::Note,
            subject,
            summary,
        );
        let log = self.control.audit().clone();
        match tokio::task::spawn_blocking(move || log.append(draft)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit append failed"),
            Err(e) => tracing::error!(error = %e, "audit task failed"),
        }
    }
}

#[tonic::async_trait]
impl v1::tokens_server::Tokens for TokensService {
    async fn create(
        &self,
        request: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let who = identity(&request);
        let r = request.into_inner();
        let role = crate::auth::Role::parse(&r.role).ok_or_else(|| {
            Status::invalid_argument(format!(
                "role {:?}: one of viewer, operator, approver, admin, dataplane",
                r.role
            ))
        })?;
        let by = crate::auth::actor(who.as_ref(), "anonymous".into());
        let (name, creator) = (r.name.clone(), by.clone());
        let (token, record) = self
            .tokens(move |t| t.create(&name, role, &creator, crate::model::now_unix_ms()))
            .await?;
        self.audit(
            &by,
            format!("token/{}", record.id),
            format!(
                "token {} created for {} (role {})",
                record.id, record.name, role
            ),
        )
        .await;
        Ok(Response::new(v1::CreateTokenResponse {
            token,
            info: Some(proto::token_info(&record)),
        }))
    }

    async fn list(
        &self,
        _: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        let all = self.tokens(|t| t.list()).await?;
        Ok(Response::new(v1::ListTokensResponse {
            tokens: all.iter().map(proto::token_info).collect(),
        }))
    }

    async fn revoke(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::TokenInfo>, Status> {
        let who = identity(&request);
        let id = request.into_inner().id;
        let record = self
            .tokens(move |t| t.revoke(&id, crate::model::now_unix_ms()))
            .await?;
        self.audit(
            &crate::auth::actor(who.as_ref(), "anonymous".into()),
            format!("token/{}", record.id),
            format!("token {} of {} revoked", record.id, record.name),
        )
        .await;
        Ok(Response::new(proto::token_info(&record)))
    }

    async fn who_am_i(
        &self,
        request: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::WhoAmIResponse>, Status> {
        let who = identity(&request).ok_or_else(|| {
            Status::failed_precondition("this control service runs without authentication")
        })?;
        let (credential, token_id) = match &who.credential {
            crate::auth::Credential::Token { id } => ("token".to_string(), id.clone()),
            crate::auth::Credential::Certificate { subject } => {
                (format!("certificate {subject}"), String::new())
            }
        };
        Ok(Response::new(v1::WhoAmIResponse {
            name: who.name.clone(),
            role: who.role.to_string(),
            credential,
            token_id,
        }))
    }
}
