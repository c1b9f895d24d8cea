//! The JSON shape of a policy document: turns bytes into the document types and hands
//! them to compilation. Natively every structural problem (unknown field, wrong type,
//! missing field, unknown variant) is reported with its path, together with the
//! semantic problems of the parts that are well-formed; in the wasm build the first
//! problem rejects the document. Decides nothing about the values: that is
//! compilation's job.

use switchyard_policy_doc::PolicyDoc;

#[cfg(doc)]
use super::check::FieldIssue;
use super::check::Invalid;

/// Parse the document and compile it with `compile`.
///
/// Natively: the JSON is checked against the document's shape first (`shape`), every
/// problem reported with its path. A document with shape problems is still compiled,
/// repaired (unknown fields dropped, unusable values replaced), so that it is rejected
/// with its semantic problems too; findings about repaired values are left out (they
/// would be about placeholders), and so is everything when `stacks` itself is unusable
/// (every reference to a stack would be reported). In the wasm build, where code size
/// matters and the control service has already validated natively, the first problem
/// rejects the document, with its line and column.
pub(in crate::policy) fn validate<T>(
    json: &[u8],
    compile: impl Fn(PolicyDoc) -> Result<T, Invalid>,
) -> Result<T, Invalid> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        native::validate(json, compile)
    }
    #[cfg(target_arch = "wasm32")]
    {
        let doc = switchyard_policy_doc::from_slice(json)
            .map_err(|e| Invalid::one("$", e.to_string()))?;
        compile(doc)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use serde_json::Value;
    use switchyard_policy_doc::PolicyDoc;

    use crate::policy::check::{Ctx, Invalid};
    use crate::policy::shape;

    pub(super) fn validate<T>(
        json: &[u8],
        compile: impl Fn(PolicyDoc) -> Result<T, Invalid>,
    ) -> Result<T, Invalid> {
        let value: Value =
            serde_json::from_slice(json).map_err(|e| Invalid::one("$", e.to_string()))?;
        let mut ctx = Ctx::default();
        let checked = shape::check(&mut ctx, &value);
        if ctx.errors.is_empty() {
            // The shape is right: the document types read the bytes themselves, so that
            // what the table cannot see (a repeated field) is still an error.
            return compile(deserialize(json)?);
        }
        let mut errors = ctx.errors;
        let usable = |p: &String| p != "stacks";
        if checked.repaired_paths.iter().all(usable) {
            let doc = checked
                .repaired
                .and_then(|v| serde_json::from_value::<PolicyDoc>(v).ok());
            if let Some(Err(invalid)) = doc.map(&compile) {
                errors.extend(
                    invalid
                        .errors
                        .into_iter()
                        .filter(|e| !shape::touches_repaired(&e.path, &checked.repaired_paths)),
                );
            }
        }
        Err(Invalid { errors })
    }

    /// The document types from the bytes; a problem names its field path.
    fn deserialize(json: &[u8]) -> Result<PolicyDoc, Invalid> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let doc: PolicyDoc = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            let path = if path == "." { "$".to_string() } else { path };
            Invalid::one(path, err.into_inner().to_string())
        })?;
        de.end().map_err(|e| Invalid::one("$", e.to_string()))?;
        Ok(doc)
    }
}
