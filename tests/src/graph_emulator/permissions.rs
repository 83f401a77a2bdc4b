//! Application permissions: each Graph operation is answered only for a
//! token whose `roles` claim holds one of the permissions its API page's
//! permissions table names (least privileged or higher); otherwise `403`
//! before the handler runs, as `Authorization_RequestDenied` for the
//! directory (`users/{id}/settings/exchange`) and `ErrorAccessDenied` for
//! mailboxes. A token that is not valid at all is left to the handler's
//! `401`. The pre-authenticated import URL carries its session's own
//! authorization and is not checked here.

use std::sync::Arc;

use axum::extract::{Request, State as AxumState};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::GraphError;
use super::{Shared, identity};

/// `GET /users/{id}/settings/exchange` (usersettings-list-exchange).
const USER_READ: &[&str] = &["User.Read.All", "User.ReadWrite.All"];
/// Listing and reading mailbox folders (mailbox-list-folders,
/// mailboxfolder-list-childfolders, mailboxfolder-get, mailboxfolder-delta).
const FOLDER_READ: &[&str] = &["MailboxFolder.Read.All", "MailboxFolder.ReadWrite.All"];
/// Creating folders (mailbox-post-folders).
const FOLDER_WRITE: &[&str] = &["MailboxFolder.ReadWrite.All"];
/// Listing and reading items (mailboxfolder-list-items, mailboxitem-get,
/// mailboxitem-delta).
const ITEM_READ: &[&str] = &["MailboxItem.Read.All"];
/// `exportItems` (mailbox-exportitems).
const ITEM_EXPORT: &[&str] = &["MailboxItem.Export.All", "MailboxItem.ImportExport.All"];
/// `createImportSession` (mailbox-createimportsession).
const ITEM_IMPORT: &[&str] = &["MailboxItem.ImportExport.All"];
/// The mail API's folders, message delta, messages and `$value`
/// (Mail.ReadBasic.All lists but does not read a body: not offered).
const MAIL_READ: &[&str] = &["Mail.Read", "Mail.ReadWrite"];

/// The permissions that each allow the operation at `path` (the request's
/// path), and whether it is a directory operation.
fn accepted(method: &Method, path: &str) -> Option<(&'static [&'static str], bool)> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1.0", "users", _, "settings", "exchange"] => Some((USER_READ, true)),
        ["v1.0", "users", _, _, ..] => Some((MAIL_READ, false)),
        ["v1.0", "admin", "exchange", "mailboxes", _, operation @ ..] => {
            let roles = match (method, operation) {
                (&Method::POST, ["exportItems"]) => ITEM_EXPORT,
                (&Method::POST, ["createImportSession"]) => ITEM_IMPORT,
                (&Method::POST, _) => FOLDER_WRITE,
                (_, operation) if operation.contains(&"items") => ITEM_READ,
                _ => FOLDER_READ,
            };
            Some((roles, false))
        }
        _ => None,
    }
}

/// Refuses a request whose token lacks every permission its operation
/// accepts.
pub(crate) async fn enforce(
    AxumState(shared): AxumState<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let Some((accepted, directory)) = accepted(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let granted = identity::bearer_token(request.headers()).and_then(|token| {
        let state = shared.lock();
        let access = state.tokens.get(token).filter(|t| t.is_live())?;
        Some(access.roles.as_ref().is_none_or(|roles| {
            roles
                .iter()
                .any(|r| accepted.iter().any(|a| a.eq_ignore_ascii_case(r)))
        }))
    });
    if granted != Some(false) {
        return next.run(request).await;
    }
    let refusal = if directory {
        GraphError::new(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )
    } else {
        GraphError::new(
            StatusCode::FORBIDDEN,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        )
    };
    refusal.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operation_needs_the_permissions_of_its_page() {
        let mailbox = "/v1.0/admin/exchange/mailboxes/MBX:a@b";
        let cases = [
            (
                Method::GET,
                "/v1.0/users/a@b.example/settings/exchange",
                USER_READ,
            ),
            (
                Method::GET,
                &format!("{mailbox}/folders") as &str,
                FOLDER_READ,
            ),
            (Method::POST, &format!("{mailbox}/folders"), FOLDER_WRITE),
            (
                Method::POST,
                &format!("{mailbox}/folders/inbox/childFolders"),
                FOLDER_WRITE,
            ),
            (
                Method::GET,
                &format!("{mailbox}/folders/delta"),
                FOLDER_READ,
            ),
            (
                Method::GET,
                &format!("{mailbox}/folders/AAMk/items/delta"),
                ITEM_READ,
            ),
            (Method::POST, &format!("{mailbox}/exportItems"), ITEM_EXPORT),
            (
                Method::POST,
                &format!("{mailbox}/createImportSession"),
                ITEM_IMPORT,
            ),
            (
                Method::GET,
                "/v1.0/users/a@b.example/messages/AAMk/$value",
                MAIL_READ,
            ),
        ];
        for (method, path, roles) in cases {
            assert_eq!(accepted(&method, path).map(|a| a.0), Some(roles), "{path}");
        }
        assert_eq!(
            accepted(&Method::POST, "/api/gv1.0/Mailboxes('MBX:a@b')/importItem"),
            None
        );
        assert_eq!(accepted(&Method::POST, "/tenant/oauth2/v2.0/token"), None);
    }
}
