"""tunedeck's themes (Textual `Theme` objects) and the global stylesheet beside this file."""

from __future__ import annotations

from pathlib import Path

from textual.theme import Theme

STYLESHEET = Path(__file__).with_name("tunedeck.tcss")
DEFAULT_THEME = "tunedeck"

THEMES: tuple[Theme, ...] = (
    Theme(
        name="tunedeck",
        primary="#7AA2F7",
        secondary="#BB9AF7",
        accent="#E0AF68",
        foreground="#C8D3F5",
        background="#15161E",
        surface="#1E2030",
        panel="#2A2E44",
        success="#9ECE6A",
        warning="#E0AF68",
        error="#F7768E",
        dark=True,
    ),
    Theme(
        name="tunedeck-light",
        primary="#2457B5",
        secondary="#7445B8",
        accent="#A8520F",
        foreground="#1F2328",
        background="#F5F7FA",
        surface="#FFFFFF",
        panel="#E3E8EF",
        success="#1E7A34",
        warning="#8A5A00",
        error="#C0262D",
        dark=False,
    ),
    Theme(
        name="tunedeck-contrast",
        primary="#FFFF00",
        secondary="#00FFFF",
        accent="#FF66FF",
        foreground="#FFFFFF",
        background="#000000",
        surface="#000000",
        panel="#202020",
        success="#00FF66",
        warning="#FFB000",
        error="#FF4040",
        dark=True,
        variables={
            "border": "#FFFFFF",
            "border-blurred": "#A0A0A0",
            "block-cursor-background": "#FFFF00",
            "block-cursor-foreground": "#000000",
            "block-cursor-blurred-background": "#808000",
            "footer-key-foreground": "#FFFF00",
        },
    ),
)
