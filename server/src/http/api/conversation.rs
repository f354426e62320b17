//! The side-port's conversation routes (issue 15): a chat's receipts
//! (`GET /v1/chats/{id}/receipts`), the caller's settings (`GET`/`PUT
//! /v1/settings`), and what the side-port tells the cores when a read marker or
//! a setting changes (the chat's owner core pushes the receipts).

use serde::Deserialize;
use serde_json::json;

use super::{Api, Handled, Request, Response, parse_chat_id, parse_json, store_error};
use crate::http::error::HttpError;
use crate::ids::{ChatId, CoreId, Seq, UserId};
use crate::runtime::Command;
use crate::store::Settings;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsBody {
    read_receipts: bool,
}

impl Api {
    /// `GET /v1/chats/{id}/receipts`: each member's delivered seq and read marker, as the caller
    /// may see them (read markers are 0 when the member or the caller turned read receipts off;
    /// the caller's own entry is always exact).
    pub(super) fn receipts(&self, req: &Request<'_>, id: &str) -> Handled {
        let (caller, _) = self.authenticate(req)?;
        let chat = parse_chat_id(id)?;
        let Some(info) = self.store.chat(chat).map_err(store_error)? else {
            return Err(HttpError::UnknownChat.into());
        };
        if !info.members.contains(&caller) {
            // As elsewhere: a chat the caller is not in does not exist for it.
            return Err(HttpError::UnknownChat.into());
        }
        let delivered = self.store.delivered_seqs(chat).map_err(store_error)?;
        let caller_shows = self.store.settings(caller).map_err(store_error)?.read_receipts;
        let mut members = info.members.clone();
        members.sort_unstable();
        let mut receipts = Vec::with_capacity(members.len());
        for user in members {
            let delivered = delivered
                .iter()
                .find(|&&(u, _)| u == user)
                .map_or(0, |&(_, seq)| seq.0);
            let read = self.store.read_marker(user, chat).map_err(store_error)?;
            let shows = user == caller
                || (caller_shows && self.store.settings(user).map_err(store_error)?.read_receipts);
            receipts.push(json!({
                "user_id": user.0,
                "delivered_seq": delivered,
                "read_seq": if shows { read.0 } else { 0 },
            }));
        }
        Ok(Response::json(
            200,
            &json!({"chat_id": chat.0, "receipts": receipts}),
        ))
    }

    /// `GET /v1/settings`: the caller's settings.
    pub(super) fn get_settings(&self, req: &Request<'_>) -> Handled {
        let (user, _) = self.authenticate(req)?;
        let settings = self.store.settings(user).map_err(store_error)?;
        Ok(Response::json(
            200,
            &json!({"read_receipts": settings.read_receipts}),
        ))
    }

    /// `PUT /v1/settings {"read_receipts": bool}`: stores the caller's settings (durably), then
    /// tells every core, which re-announce the caller's receipts in the chats they own.
    pub(super) fn put_settings(&self, req: &Request<'_>) -> Handled {
        let (user, _) = self.authenticate_write(req)?;
        let body: SettingsBody = parse_json(req.body)?;
        self.store.set_settings(
            user,
            Settings {
                read_receipts: body.read_receipts,
            },
        );
        for core in 0..self.mesh.len() {
            let msg = crate::core::CoreMsg::Settings {
                user,
                read_receipts: body.read_receipts,
            };
            if self
                .mesh
                .send_blocking(CoreId(core), Command::Core(vec![msg]))
                .is_err()
            {
                tracing::warn!(core, "settings change: the core is gone (stopping?)");
            }
        }
        Ok(Response::json(200, &json!({"read_receipts": body.read_receipts})))
    }

    /// `user`'s read marker in `chat` moved to `seq` (stored already): the chat's owner core
    /// pushes the read receipt.
    pub(super) fn read_marker_moved(&self, user: UserId, chat: ChatId, seq: Seq) {
        let core = chat.owner_core(self.mesh.len());
        let msg = crate::core::CoreMsg::ReadMarker { chat, user, seq };
        if self.mesh.send_blocking(core, Command::Core(vec![msg])).is_err() {
            tracing::warn!(%core, "read marker: the owner core is gone (stopping?)");
        }
    }
}
