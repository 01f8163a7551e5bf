//! The page frame: head, navigation, the logout form.

use axum::response::Html;
use maud::{html, Markup, DOCTYPE};

use super::auth::Viewer;

/// A page without navigation (login, errors).
pub fn bare(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    meta name="color-scheme" content="light dark";
                    title { (title) " · Rampart" }
                    link rel="stylesheet" href="/assets/console.css";
                }
                body { (body) }
            }
        }
        .into_string(),
    )
}

const NAV: [(&str, &str); 5] = [
    ("/", "Overview"),
    ("/events", "Events"),
    ("/alerts", "Alerts"),
    ("/devices", "Devices"),
    ("/policy", "Policy"),
];

/// A console page: navigation with `active` marked, the user and role, logout.
pub fn page(title: &str, viewer: &Viewer, active: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    meta name="color-scheme" content="light dark";
                    title { (title) " · Rampart" }
                    link rel="stylesheet" href="/assets/console.css";
                    script src="/assets/console.js" defer {}
                }
                body {
                    a.skip href="#main" { "Skip to content" }
                    header {
                        nav aria-label="Console" {
                            span.brand { "Rampart" }
                            @for (href, label) in NAV {
                                @if href == active {
                                    a href=(href) aria-current="page" { (label) }
                                } @else {
                                    a href=(href) { (label) }
                                }
                            }
                        }
                        div.who {
                            span { (viewer.session.user) " · " (viewer.session.role.as_str()) }
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(viewer.session.csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                    main id="main" { (body) }
                }
            }
        }
        .into_string(),
    )
}
