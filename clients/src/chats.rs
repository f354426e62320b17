//! Chats over the HTTP side-port: direct chats, groups and their members, and
//! the caller's chat list. Messages themselves travel over a [`crate::Connection`].

use serde::Deserialize;

use crate::{ClientError, HttpClient};

/// `{"chat_id"}` answers.
#[derive(Debug, Deserialize)]
struct ChatIdBody {
    chat_id: u64,
}

/// One entry of [`HttpClient::chats`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChatSummary {
    /// The chat.
    pub chat_id: u64,
    /// `"direct"` or `"group"`.
    pub kind: String,
    /// The group's name (empty for direct chats).
    #[serde(default)]
    pub name: String,
    /// The seq of the chat's last committed message (0 when empty).
    pub last_seq: u64,
    /// The caller's read marker: read up to this seq (0 when never marked).
    #[serde(default)]
    pub read_seq: u64,
    /// Text messages of others after the read marker that are not deleted (the same on every
    /// device of the user).
    #[serde(default)]
    pub unread: u64,
}

#[derive(Debug, Deserialize)]
struct ReadAnswer {
    read_seq: u64,
}

/// One member's entry of [`HttpClient::receipts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct MemberReceipt {
    /// The member.
    pub user_id: u64,
    /// The highest seq any of its devices acknowledged.
    pub delivered_seq: u64,
    /// Its read marker (0 when it or the caller turned read receipts off).
    pub read_seq: u64,
}

#[derive(Debug, Deserialize)]
struct ReceiptList {
    receipts: Vec<MemberReceipt>,
}

#[derive(Debug, Deserialize)]
struct SettingsAnswer {
    read_receipts: bool,
}

#[derive(Debug, Deserialize)]
struct ChatList {
    chats: Vec<ChatSummary>,
}

/// One member in [`Group::members`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GroupMember {
    /// The member.
    pub user_id: u64,
    /// Their username.
    pub username: String,
}

/// `GET /v1/groups/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Group {
    /// The group's chat id.
    pub chat_id: u64,
    /// Its name.
    pub name: String,
    /// The owner's user id.
    pub owner: u64,
    /// Current members, the owner included.
    pub members: Vec<GroupMember>,
}

impl HttpClient {
    /// `POST /v1/dms`: the direct chat with a friend (the same chat every time).
    ///
    /// # Errors
    /// [`ClientError::Http`] 403 `not_friends` when the two are not friends.
    pub fn direct_chat(&self, token: &str, user_id: u64) -> Result<u64, ClientError> {
        let body = serde_json::json!({ "user_id": user_id });
        let answer: ChatIdBody =
            self.call_json("POST /v1/dms", "POST", "/v1/dms", Some(token), Some(&body))?;
        Ok(answer.chat_id)
    }

    /// `POST /v1/groups`: a group owned by the caller with these friends.
    ///
    /// # Errors
    /// [`ClientError::Http`]: 403 `not_friends`, 400 `too_many_members`, validation errors.
    pub fn create_group(&self, token: &str, name: &str, members: &[u64]) -> Result<u64, ClientError> {
        let body = serde_json::json!({ "name": name, "members": members });
        let answer: ChatIdBody =
            self.call_json("POST /v1/groups", "POST", "/v1/groups", Some(token), Some(&body))?;
        Ok(answer.chat_id)
    }

    /// `GET /v1/groups/{id}` (members only).
    ///
    /// # Errors
    /// [`ClientError::Http`] 404 `unknown_chat` for a non-member or a missing group.
    pub fn group(&self, token: &str, chat_id: u64) -> Result<Group, ClientError> {
        let path = format!("/v1/groups/{chat_id}");
        self.call_json("GET /v1/groups/{id}", "GET", &path, Some(token), None)
    }

    /// `POST /v1/groups/{id}/members`: the owner adds a friend.
    ///
    /// # Errors
    /// [`ClientError::Http`] with the refusal's code.
    pub fn add_member(&self, token: &str, chat_id: u64, user_id: u64) -> Result<(), ClientError> {
        let path = format!("/v1/groups/{chat_id}/members");
        let body = serde_json::json!({ "user_id": user_id });
        self.call_empty("POST", &path, Some(token), Some(&body))
    }

    /// `DELETE /v1/groups/{id}/members/{user_id}`: the owner removes a member, or a member leaves.
    ///
    /// # Errors
    /// [`ClientError::Http`] with the refusal's code.
    pub fn remove_member(&self, token: &str, chat_id: u64, user_id: u64) -> Result<(), ClientError> {
        let path = format!("/v1/groups/{chat_id}/members/{user_id}");
        self.call_empty("DELETE", &path, Some(token), None)
    }

    /// `GET /v1/chats`: the caller's chats with their last seq.
    ///
    /// # Errors
    /// Transport errors, [`ClientError::Http`] 401 for a bad token.
    pub fn chats(&self, token: &str) -> Result<Vec<ChatSummary>, ClientError> {
        let list: ChatList = self.call_json("GET /v1/chats", "GET", "/v1/chats", Some(token), None)?;
        Ok(list.chats)
    }

    /// `POST /v1/chats/{id}/read`: the caller has read `chat_id` up to `seq`.
    /// Returns the marker now stored (it never moves back).
    ///
    /// # Errors
    /// [`ClientError::Http`] 404 `unknown_chat` for a non-member.
    pub fn mark_read(&self, token: &str, chat_id: u64, seq: u64) -> Result<u64, ClientError> {
        let path = format!("/v1/chats/{chat_id}/read");
        let body = serde_json::json!({ "seq": seq });
        let answer: ReadAnswer = self.call_json(
            "POST /v1/chats/{id}/read",
            "POST",
            &path,
            Some(token),
            Some(&body),
        )?;
        Ok(answer.read_seq)
    }

    /// `GET /v1/chats/{id}/receipts`: every member's delivered seq and read marker.
    ///
    /// # Errors
    /// [`ClientError::Http`] 404 `unknown_chat` for a non-member.
    pub fn receipts(&self, token: &str, chat_id: u64) -> Result<Vec<MemberReceipt>, ClientError> {
        let path = format!("/v1/chats/{chat_id}/receipts");
        let list: ReceiptList =
            self.call_json("GET /v1/chats/{id}/receipts", "GET", &path, Some(token), None)?;
        Ok(list.receipts)
    }

    /// `PUT /v1/settings {"read_receipts": on}`: turns the caller's read receipts on or off.
    /// Returns the setting now stored.
    ///
    /// # Errors
    /// Transport errors, [`ClientError::Http`] 401 for a bad token.
    pub fn set_read_receipts(&self, token: &str, on: bool) -> Result<bool, ClientError> {
        let body = serde_json::json!({ "read_receipts": on });
        let answer: SettingsAnswer = self.call_json(
            "PUT /v1/settings",
            "PUT",
            "/v1/settings",
            Some(token),
            Some(&body),
        )?;
        Ok(answer.read_receipts)
    }
}
