"""Receipt pushes exactly as the SMS platforms send them (their published examples' shape)."""

from __future__ import annotations

ALIYUN_SMS_REPORT = """[
  {
    "phone_number" : "PHONE",
    "send_time" : "2017-01-01 00:00:00",
    "report_time" : "REPORT_TIME",
    "success" : SUCCESS,
    "err_code" : "ERR_CODE",
    "err_msg" : "用户接收成功",
    "sms_size" : "1",
    "biz_id" : "BIZ_ID",
    "out_id" : "OUT_ID"
  }
]"""

TENCENT_SMS_STATUS = """[
  {
    "user_receive_time": "REPORT_TIME",
    "nationcode": "86",
    "mobile": "PHONE",
    "report_status": "STATUS",
    "errmsg": "ERR_CODE",
    "description": "用户短信送达成功",
    "sid": "SID",
    "ext": "EXT"
  }
]"""


def aliyun_push(
    out_id: str,
    *,
    biz_id: str = "932702304080415357^0",
    success: bool = True,
    err_code: str = "DELIVERED",
    phone: str = "13811112222",
    report_time: str = "2017-01-01 00:00:03",
) -> str:
    """One Aliyun SmsReport push of one item."""
    return (
        ALIYUN_SMS_REPORT.replace("PHONE", phone)
        .replace("REPORT_TIME", report_time)
        .replace("SUCCESS", "true" if success else "false")
        .replace("ERR_CODE", err_code)
        .replace("BIZ_ID", biz_id)
        .replace("OUT_ID", out_id)
    )


def tencent_push(
    ext: str,
    *,
    sid: str = "2019:5388840123",
    status: str = "SUCCESS",
    err_code: str = "DELIVRD",
    phone: str = "13811112222",
    report_time: str = "2017-01-01 00:00:03",
) -> str:
    """One Tencent Cloud SMS status callback of one item."""
    return (
        TENCENT_SMS_STATUS.replace("PHONE", phone)
        .replace("REPORT_TIME", report_time)
        .replace("STATUS", status)
        .replace("ERR_CODE", err_code)
        .replace("SID", sid)
        .replace("EXT", ext)
    )
