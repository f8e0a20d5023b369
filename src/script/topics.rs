//! Topics in the script API (SPEC 9): `ws.subscribe(topic)`, `ws.unsubscribe(topic)`,
//! `ws.isSubscribed(topic)`, `ws.topics`, `ws.publish(topic, message)` (everyone but `ws`),
//! `wss.publish(topic, message)` and `wss.subscriberCount(topic)`; the global `NODE_ID`.
//! The fan-out itself is native ([`crate::topics::Topics`]).

use super::error::api_error;
use std::rc::Rc;

use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString};

use super::client::ClientObj;
use super::connection::{ConnObj, Socket};
use super::convert::{data_to_payload, text_payload};
use super::server::ServerObj;
use super::state::Ctx;
use crate::payload::Payload;
use crate::topics::check_topic;

type Res<T> = Result<T, Box<EvalAltResult>>;

pub(super) fn register(engine: &mut Engine, ctx: &Rc<Ctx>) {
    register_socket::<ConnObj>(engine, ctx);
    register_socket::<ClientObj>(engine, ctx);

    let c = ctx.clone();
    engine.register_fn(
        "publish",
        move |_: &mut ServerObj, topic: ImmutableString, text: ImmutableString| -> Res<i64> {
            publish(&c, &topic, text_payload(&text), None)
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "publish",
        move |_: &mut ServerObj, topic: ImmutableString, message: Dynamic| -> Res<i64> {
            publish(&c, &topic, data_to_payload(&message)?, None)
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "subscriberCount",
        move |_: &mut ServerObj, topic: ImmutableString| -> i64 {
            c.net.topics().subscriber_count(&topic) as i64
        },
    );
}

fn register_socket<T: Socket>(engine: &mut Engine, ctx: &Rc<Ctx>) {
    let c = ctx.clone();
    engine.register_fn(
        "subscribe",
        move |s: &mut T, topic: ImmutableString| -> Res<bool> {
            checked(&topic)?;
            c.net
                .topics()
                .subscribe(s.handle(), &topic)
                .map_err(api_error)
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "unsubscribe",
        move |s: &mut T, topic: ImmutableString| -> bool {
            c.net.topics().unsubscribe(s.handle().id(), &topic)
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "isSubscribed",
        move |s: &mut T, topic: ImmutableString| -> bool {
            c.net.topics().is_subscribed(s.handle().id(), &topic)
        },
    );
    let c = ctx.clone();
    engine.register_get("topics", move |s: &mut T| -> Array {
        c.net
            .topics()
            .topics_of(s.handle().id())
            .iter()
            .map(|t| Dynamic::from(t.to_string()))
            .collect()
    });
    let c = ctx.clone();
    engine.register_fn(
        "publish",
        move |s: &mut T, topic: ImmutableString, text: ImmutableString| -> Res<i64> {
            publish(&c, &topic, text_payload(&text), Some(s.handle().id()))
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "publish",
        move |s: &mut T, topic: ImmutableString, message: Dynamic| -> Res<i64> {
            publish(
                &c,
                &topic,
                data_to_payload(&message)?,
                Some(s.handle().id()),
            )
        },
    );
}

fn checked(topic: &str) -> Res<()> {
    check_topic(topic).map_err(api_error)
}

/// Hands `payload` to the subscribers of `topic` (but `except`), here and on the other nodes;
/// the number of subscribers here it was handed to.
fn publish(ctx: &Ctx, topic: &str, payload: Payload, except: Option<u64>) -> Res<i64> {
    checked(topic)?;
    Ok(ctx.net.topics().publish(topic, payload, except) as i64)
}
