//! `switchyard.v1.Audit`: the hash-chained audit log, read and verified.

use super::*;

/// `switchyard.v1.Audit`.
pub struct AuditService {
    control: Arc<Control>,
}

impl AuditService {
    pub fn new(control: Arc<Control>) -> Self {
        Self { control }
    }
}

fn audit_status(e: crate::brain::audit::AuditError) -> Status {
    tracing::error!(error = %e, "audit log read failed");
    Status::internal(e.to_string())
}

#[tonic::async_trait]
impl v1::audit_server::Audit for AuditService {
    async fn list(
        &self,
        request: Request<v1::AuditListRequest>,
    ) -> Result<Response<v1::AuditListResponse>, Status> {
        let r = request.into_inner();
        let limit = match r.limit {
            0 => 50,
            n => n.min(1000) as usize,
        };
        let log = self.control.audit().clone();
        let prefix = r.subject_prefix;
        let (entries, head) = tokio::task::spawn_blocking(move || {
            let head = log.head()?.map(|h| h.seq).unwrap_or(0);
            let matches =
                |e: &crate::brain::audit::AuditEntry| e.draft.subject.starts_with(&prefix);
            let mut out = Vec::new();
            if r.newest {
                // Walk back from the head in pages until `limit` entries match.
                let mut upto = head;
                while upto > 0 && out.len() < limit {
                    let from = upto.saturating_sub(256);
                    let page = log.list(Some(from), (upto - from) as usize)?;
                    out.extend(page.into_iter().rev().filter(|e| matches(e)));
                    upto = from;
                }
                out.truncate(limit);
            } else {
                let mut after = r.after_seq;
                while out.len() < limit {
                    let page = log.list(Some(after), 256)?;
                    let Some(last) = page.last() else { break };
                    after = last.seq;
                    out.extend(page.into_iter().filter(|e| matches(e)));
                }
                out.truncate(limit);
            }
            Ok::<_, crate::brain::audit::AuditError>((out, head))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(audit_status)?;
        Ok(Response::new(v1::AuditListResponse {
            entries: entries.iter().map(proto::audit_entry).collect(),
            head_seq: head,
        }))
    }

    async fn verify(
        &self,
        _: Request<v1::AuditVerifyRequest>,
    ) -> Result<Response<v1::AuditVerifyResponse>, Status> {
        let log = self.control.audit().clone();
        let v = tokio::task::spawn_blocking(move || log.verify())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(audit_status)?;
        Ok(Response::new(proto::audit_verification(&v)))
    }
}
