//! Messaging on the sender's home core: a `Send` frame checked (rate, ids,
//! text bounds) and forwarded to the chat's owner core.

use super::*;

impl Core {
    pub(super) fn handle_send_frame(
        &mut self,
        conn: ConnId,
        send: fb::Send<'_>,
        request_id: u64,
        now: Instant,
    ) {
        let Some(session) = self.sessions.get_mut(conn.0) else {
            return;
        };
        let State::Active { user, .. } = session.state else {
            return;
        };
        let generation = session.generation;
        // Token bucket: `send_rate` per second, bursts of the same size.
        if !session.sends.take(self.config.send_rate, now) {
            let message = format!(
                "at most {} sends per second per connection",
                self.config.send_rate
            );
            return self.reply_error(conn, ErrorCode::RateLimited, &message, request_id);
        }
        let text = send.text().unwrap_or_default();
        if send.chat_id() == 0 {
            return self.reply_error(conn, ErrorCode::UnknownChat, "chat 0 does not exist", request_id);
        }
        if send.client_msg_id() == 0 {
            return self.reply_error(
                conn,
                ErrorCode::MissingClientMsgId,
                "client_msg_id must be a nonzero id chosen per message (0 is what an unset field reads as)",
                request_id,
            );
        }
        if text.is_empty() {
            return self.reply_error(
                conn,
                ErrorCode::EmptyText,
                "a message needs at least one character",
                request_id,
            );
        }
        // Byte length bounds the character count from above: count only when it could matter.
        if text.len() > MAX_TEXT_CHARS && text.chars().count() > MAX_TEXT_CHARS {
            let message = format!("a message has at most {MAX_TEXT_CHARS} characters");
            return self.reply_error(conn, ErrorCode::TextTooLong, &message, request_id);
        }
        let max_text = max_text_bytes(self.config.limits.max_frame);
        if text.len() > max_text {
            let message = format!(
                "with this server's frame limit of {} bytes a message has at most {max_text} bytes of UTF-8",
                self.config.limits.max_frame
            );
            return self.reply_error(conn, ErrorCode::TextTooLong, &message, request_id);
        }
        let chat = ChatId(send.chat_id());
        let request = SendRequest {
            origin: Origin {
                core: self.config.core,
                conn,
                generation,
            },
            request_id,
            sender: user,
            chat,
            client_msg_id: ClientMsgId(send.client_msg_id()),
            text: text.to_owned(),
        };
        self.route(chat.owner_core(self.config.cores), CoreMsg::Send(request), now);
    }
}
