"""E-mail delivery of a written report (the legacy scheduler mailed its reports).

One message per report to all its recipients: a plain-text summary, the HTML report as the
alternative body, and the HTML and CSV files attached (many mail clients drop inline SVG from a
body, none from an attachment). Sent through ``REPORT_SMTP_HOST`` with STARTTLS, implicit TLS or
neither, logging in when ``REPORT_SMTP_USER`` is set. Any refusal or connection problem raises
:class:`DeliveryError` with the reason; the password never appears in it.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from forecast_pipeline.reports.config import SmtpSettings


class DeliveryError(RuntimeError):
    """The report was written but could not be e-mailed: the message says to whom and why."""


def build_message(
    smtp: SmtpSettings, recipients: list[str], subject: str, text: str, html: str, attachments: list[Path]
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = smtp.sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=smtp.sender.rpartition("@")[2].strip(">") or None)
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    for path in attachments:
        subtype = "html" if path.suffix == ".html" else "csv"
        # text, so the charset (utf-8) is declared: product names are rarely plain ASCII
        message.add_attachment(path.read_text(encoding="utf-8"), subtype=subtype, filename=path.name)
    return message


def send(smtp: SmtpSettings, message: EmailMessage) -> None:
    """Deliver to every recipient or raise :class:`DeliveryError` (a partial refusal is an error)."""
    recipients = [a.strip() for a in str(message["To"]).split(",")]
    try:
        if smtp.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                smtp.host, smtp.port, timeout=smtp.timeout_seconds, context=ssl.create_default_context()
            )
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_seconds)
        with client:
            if smtp.security == "starttls":
                client.starttls(context=ssl.create_default_context())
            if smtp.user and smtp.password:
                client.login(smtp.user, smtp.password.get_secret_value())
            refused = client.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"e-mail to {', '.join(recipients)} refused: {_reasons(exc.recipients)}") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(
            f"e-mail to {', '.join(recipients)} via {smtp.host}:{smtp.port} failed: {type(exc).__name__}: {exc}"
        ) from None
    if refused:
        raise DeliveryError(f"e-mail refused for {_reasons(refused)} (sent to the others)")


def _reasons(refused: dict) -> str:
    return "; ".join(
        f"{address} ({code} {message.decode(errors='replace') if isinstance(message, bytes) else message})"
        for address, (code, message) in refused.items()
    )
