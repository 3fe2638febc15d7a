"""The texts of the messages we send: verification codes by SMS and email, and security notices.

Every text is rendered here and nowhere else, so wording reviews (and the
carriers' SMS template registration, which requires the signature 【小禾企服网】
and a fixed wording per template) have one place to look. Unknown purposes,
channels or notice kinds raise `ValueError`: they are programming errors, not
user input, and the message never contains the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from xiaohe.identity.server.shared.identifiers import CHINA_TIMEZONE

SIGNATURE = "【小禾企服网】"
PLATFORM = "小禾企服网"

CHANNEL_SMS = "SMS"
CHANNEL_EMAIL = "EMAIL"
CHANNELS: tuple[str, ...] = (CHANNEL_SMS, CHANNEL_EMAIL)


@dataclass(frozen=True)
class _PurposeText:
    """Wording for one purpose: what the user is doing, the email subject, a warning."""

    action: str
    subject: str
    warning: str = ""


_RISK_WARNING = "如非本人操作，您的账号可能存在风险，请尽快修改密码或联系客服。"

_PURPOSES: MappingProxyType[str, _PurposeText] = MappingProxyType(
    {
        "LOGIN": _PurposeText("您正在登录小禾企服网", "登录验证码"),
        "REGISTER": _PurposeText("您正在注册小禾企服网账号", "注册验证码"),
        "RESET_PASSWORD": _PurposeText(
            "您正在重置小禾企服网账号密码", "重置密码验证码", _RISK_WARNING
        ),
        "BIND_PHONE": _PurposeText("您正在为小禾企服网账号绑定手机号", "绑定手机号验证码"),
        "BIND_EMAIL": _PurposeText("您正在为小禾企服网账号绑定邮箱", "绑定邮箱验证码"),
        "CHANGE_PHONE": _PurposeText(
            "您正在更换小禾企服网账号绑定的手机号", "更换手机号验证码", _RISK_WARNING
        ),
        "RECOVER_ACCOUNT": _PurposeText(
            "您正在找回小禾企服网账号", "找回账号验证码", _RISK_WARNING
        ),
        "REAL_NAME": _PurposeText("您正在进行小禾企服网实名认证", "实名认证验证码"),
        "DEACTIVATE": _PurposeText(
            "您正在注销小禾企服网账号，注销后账号将无法恢复", "注销账号验证码", _RISK_WARNING
        ),
        # -- issue 14: export --
        "EXPORT_DATA": _PurposeText(
            "您正在导出小禾企服网账号的个人信息副本", "导出个人信息验证码", _RISK_WARNING
        ),
        # -- end export --
    }
)

PURPOSES: tuple[str, ...] = tuple(_PURPOSES)


@dataclass(frozen=True)
class _NoticeText:
    """A security notice: subject, text (a `str.format` template), the fields it needs."""

    subject: str
    template: str
    fields: frozenset[str]


_NOTICES: MappingProxyType[str, _NoticeText] = MappingProxyType(
    {
        "password_changed": _NoticeText(
            "账号密码已修改",
            SIGNATURE
            + "您的账号密码已于{at}修改。如非本人操作，请立即通过“找回账号”重置密码并联系客服。",
            frozenset({"at"}),
        ),
        "phone_changed": _NoticeText(
            "绑定手机号已更换",
            SIGNATURE
            + "您的账号绑定手机号已于{at}更换为{new_phone}。如非本人操作，请立即联系客服。",
            frozenset({"at", "new_phone"}),
        ),
        "email_changed": _NoticeText(
            "绑定邮箱已更换",
            SIGNATURE + "您的账号绑定邮箱已于{at}更换为{new_email}。如非本人操作，请立即联系客服。",
            frozenset({"at", "new_email"}),
        ),
        "phone_bound": _NoticeText(
            "已绑定手机号",
            SIGNATURE + "您的账号已于{at}绑定手机号{new_phone}。如非本人操作，请立即联系客服。",
            frozenset({"at", "new_phone"}),
        ),
        "email_unbound": _NoticeText(
            "绑定邮箱已解除",
            SIGNATURE + "您的账号已于{at}解除绑定邮箱。如非本人操作，请立即修改密码并联系客服。",
            frozenset({"at"}),
        ),
        "login_name_reminder": _NoticeText(
            "找回账号：您的登录名",
            SIGNATURE
            + "您于{at}申请找回账号，您的登录名为{login_name}。"
            + "如非本人操作，请忽略本消息并联系客服。",
            frozenset({"at", "login_name"}),
        ),
        "account_recovered": _NoticeText(
            "账号已通过找回流程重置",
            SIGNATURE
            + "您的账号已于{at}通过“找回账号”重置了登录信息。如非本人操作，请立即联系客服。",
            frozenset({"at"}),
        ),
        "identity_claimed": _NoticeText(
            "有人使用您的证件信息注册账号",
            SIGNATURE
            + "有人于{at}使用与您账号相同的证件信息注册了新账号，该证件信息未被关联到新账号。"
            "如是您本人，您已有账号，请通过“找回账号”找回；如有疑问，请申请人工审核。",
            frozenset({"at"}),
        ),
        # Sent by email only: the number itself now reaches a stranger.
        "phone_recycled": _NoticeText(
            "绑定手机号已被运营商回收",
            SIGNATURE
            + "运营商于{at}报告您的账号绑定的手机号{old_phone}已注销或重新分配给他人（二次号）。"
            "为保护您的账号，该号码已不能用于登录、找回密码或接收通知，所有登录状态已失效。"
            "请使用登录名和密码登录，并按提示通过“绑定手机号”验证您现在使用的手机号。"
            "如有疑问，请联系客服。",
            frozenset({"at", "old_phone"}),
        ),
        # To the phone of a manual-review application that was rejected: names no account.
        "review_rejected": _NoticeText(
            "人工核验申请未通过",
            SIGNATURE + "您于近期提交的人工核验申请已于{at}审核未通过。如有疑问，请联系客服。",
            frozenset({"at"}),
        ),
        "totp_enabled": _NoticeText(
            "已开启两步验证",
            SIGNATURE
            + "您的账号已于{at}开启两步验证（动态验证码）。如非本人操作，请立即联系客服。",
            frozenset({"at"}),
        ),
        "totp_disabled": _NoticeText(
            "已关闭两步验证",
            SIGNATURE + "您的账号已于{at}关闭两步验证（动态验证码）。"
            "如非本人操作，请立即修改密码并联系客服。",
            frozenset({"at"}),
        ),
        "account_deactivated": _NoticeText(
            "账号已注销",
            SIGNATURE + "您的账号已于{at}注销，所有登录状态已失效。如非本人操作，请立即联系客服。",
            frozenset({"at"}),
        ),
        # -- issue 14: notify-only policy versions --
        "policy_updated": _NoticeText(
            "隐私政策已更新",
            SIGNATURE
            + "隐私政策已更新至第{version}版（{at}通知）。本次更新未改变个人信息的处理目的，"
            "无需重新同意；您可在应用内查看全文，如有疑问请联系客服。",
            frozenset({"at", "version"}),
        ),
        # -- end notify-only policy versions --
    }
)

NOTICE_KINDS: tuple[str, ...] = tuple(_NOTICES)


def _purpose(purpose: str) -> _PurposeText:
    text = _PURPOSES.get(purpose)
    if text is None:
        raise ValueError(f"unknown code purpose {purpose!r}")
    return text


def ttl_minutes(ttl_seconds: int) -> int:
    """The validity stated to the user, in whole minutes, rounded down (never promise more)."""
    if ttl_seconds < 60:
        raise ValueError("a code must be valid for at least one minute")
    return ttl_seconds // 60


def render_code_message(channel: str, purpose: str, code: str, ttl_seconds: int) -> str:
    """The body of a verification-code message for `channel` (SMS or EMAIL) and `purpose`."""
    wording = _purpose(purpose)
    if not code or not code.isascii() or not code.isalnum():
        raise ValueError("a code is a non-empty string of ASCII letters and digits")
    minutes = ttl_minutes(ttl_seconds)
    if channel == CHANNEL_SMS:
        return (
            f"{SIGNATURE}{wording.action}，验证码：{code}，{minutes}分钟内有效。"
            "请勿将验证码告知他人。"
        )
    if channel == CHANNEL_EMAIL:
        warning = wording.warning or "如非本人操作，请忽略本邮件。"
        return (
            "您好：\n\n"
            f"{wording.action}。本次操作的验证码为：\n\n"
            f"    {code}\n\n"
            f"验证码{minutes}分钟内有效，仅可使用一次。"
            f"请勿将验证码告知他人，{PLATFORM}工作人员不会向您索取验证码。\n\n"
            f"{warning}\n\n"
            f"{PLATFORM}\n"
            "（此邮件由系统自动发送，请勿直接回复。）\n"
        )
    raise ValueError(f"unknown channel {channel!r}")


def render_code_email_subject(purpose: str) -> str:
    """The subject line of a verification-code email (it never contains the code)."""
    return f"{SIGNATURE}{_purpose(purpose).subject}"


def compose_code_message(
    channel: str, purpose: str, code: str, ttl_seconds: int
) -> tuple[str, str]:
    """The text of a verification-code message and, for an email, its subject ("" for SMS)."""
    subject = render_code_email_subject(purpose) if channel == CHANNEL_EMAIL else ""
    return render_code_message(channel, purpose, code, ttl_seconds), subject


def notice_time(epoch_seconds: float) -> str:
    """A notice's `at` field: the local time in China, to the minute (`2026-12-02 23:09`)."""
    return datetime.fromtimestamp(epoch_seconds, tz=CHINA_TIMEZONE).strftime("%Y-%m-%d %H:%M")


def render_notice(kind: str, **fields: str) -> str:
    """The text of a security notice (e.g. `password_changed`, fields `at=...`), for SMS or email.

    Fields must be exactly those the notice names; values are inserted as they
    are, so callers pass already-masked contact points (`138****0000`) and a
    formatted local time.
    """
    notice = _NOTICES.get(kind)
    if notice is None:
        raise ValueError(f"unknown notice kind {kind!r}")
    if set(fields) != notice.fields:
        raise ValueError(f"notice {kind!r} takes exactly the fields {sorted(notice.fields)}")
    return notice.template.format(**fields)


def notice_params(kind: str, **fields: str) -> dict[str, str]:
    """A notice's fields as template variables, in the order its text uses them.

    Template-based SMS platforms fill a registered template with these (Aliyun by
    name, Tencent Cloud by position: `{1}`, `{2}` in this order).
    """
    notice = _NOTICES.get(kind)
    if notice is None:
        raise ValueError(f"unknown notice kind {kind!r}")
    order = sorted(notice.fields, key=lambda name: notice.template.index("{" + name + "}"))
    return {name: fields[name] for name in order if name in fields}


def render_notice_email_subject(kind: str) -> str:
    """The subject line of a security-notice email."""
    notice = _NOTICES.get(kind)
    if notice is None:
        raise ValueError(f"unknown notice kind {kind!r}")
    return f"{SIGNATURE}{notice.subject}"


__all__ = [
    "CHANNELS",
    "CHANNEL_EMAIL",
    "CHANNEL_SMS",
    "NOTICE_KINDS",
    "PURPOSES",
    "compose_code_message",
    "notice_params",
    "notice_time",
    "render_code_email_subject",
    "render_code_message",
    "render_notice",
    "render_notice_email_subject",
    "ttl_minutes",
]
