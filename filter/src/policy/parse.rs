//! The JSON shape of a policy document: turns bytes into the document types, reporting
//! an unknown field, a wrong type or malformed JSON as one [`FieldIssue`] with its path.
//! Decides nothing about the values: that is compilation's job.

use switchyard_policy_doc::PolicyDoc;

#[cfg(doc)]
use super::check::FieldIssue;
use super::check::Invalid;

/// Parse the document. Natively a type error names its field path
/// (`rules[3].route.targets[0].weight`); in the wasm build, where code size matters and
/// the control service has already validated natively, it names line and column.
pub(in crate::policy) fn parse(json: &[u8]) -> Result<PolicyDoc, Invalid> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let mut de = serde_json::Deserializer::from_slice(json);
        let doc: PolicyDoc = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            let path = if path == "." { "$".to_string() } else { path };
            Invalid::one(path, err.into_inner().to_string())
        })?;
        de.end().map_err(|e| Invalid::one("$", e.to_string()))?;
        Ok(doc)
    }
    #[cfg(target_arch = "wasm32")]
    {
        switchyard_policy_doc::from_slice(json).map_err(|e| Invalid::one("$", e.to_string()))
    }
}
