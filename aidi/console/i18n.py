"""The console's words in English and Chinese (the seed's users read Chinese; its page names are kept)."""

from __future__ import annotations

LANGUAGES = ("zh", "en")

_TEXT: dict[str, tuple[str, str]] = {
    # key: (english, chinese)
    "title": ("AIDI platform", "艾迪平台"),
    "data": ("Data management", "数据管理"),
    "datasets": ("Training datasets", "训练数据集"),
    "models": ("Models", "模型"),
    "tasks": ("Task management", "任务管理"),
    "jobs": ("Training jobs", "训练任务"),
    "personal": ("Personal centre", "个人中心"),
    "logout": ("Log out", "退出"),
    "login": ("Log in", "登录"),
    "login_title": ("Log in with your token", "使用令牌登录"),
    "login_help_cluster": ("Your team's cluster token APPID:APPKEY (the one `traincli init -t` takes), or an APP "
                           "KEY from the personal centre.",
                           "团队的集群令牌 APPID:APPKEY（即 `traincli init -t` 使用的令牌），"
                           "或个人中心创建的 APP KEY。"),
    "login_help_local": ("The login token `aidi console` printed when it started.",
                         "`aidi console` 启动时打印的登录令牌。"),
    "token": ("Token", "令牌"),
    "name": ("Name", "名称"),
    "type": ("Type", "类型"),
    "version": ("Version", "版本"),
    "versions": ("Versions", "版本"),
    "latest": ("Latest", "最新版本"),
    "files": ("Files", "文件数"),
    "file": ("File", "文件"),
    "size": ("Size", "大小"),
    "records": ("Records", "记录数"),
    "uploader": ("Uploaded by", "上传者"),
    "created": ("Created", "创建时间"),
    "no_datasets": ("No datasets yet. Upload one: hitc dataspace upload -n NAME -t trainset -f ./",
                    "还没有数据集。上传：hitc dataspace upload -n NAME -t trainset -f ./"),
    "no_models": ("No models yet. Save one: hitc model append -f model_append.yaml",
                  "还没有模型。保存：hitc model append -f model_append.yaml"),
    "no_jobs": ("No jobs in this tab.", "此标签下没有任务。"),
    "running": ("Running", "运行中"),
    "finished": ("Finished", "已完成"),
    "failed": ("Failed", "失败"),
    "phase": ("Phase", "状态"),
    "phase.Pending": ("Pending", "等待中"),
    "phase.Running": ("Running", "运行中"),
    "phase.Succeeded": ("Succeeded", "已完成"),
    "phase.Failed": ("Failed", "失败"),
    "phase.Suspended": ("Suspended", "已暂停"),
    "phase.Cancelled": ("Cancelled", "已取消"),
    "gpus": ("GPUs per worker", "每节点GPU"),
    "workers": ("Workers", "节点数"),
    "start": ("Started", "开始时间"),
    "duration": ("Duration", "运行时长"),
    "priority": ("Priority", "优先级"),
    "project": ("Project", "项目"),
    "reason": ("Reason", "原因"),
    "message": ("Message", "信息"),
    "why": ("Why", "说明"),
    "conditions": ("Conditions", "状况"),
    "pods": ("Pods", "Pod"),
    "role": ("Role", "角色"),
    "ready": ("Ready", "就绪"),
    "restarts": ("Restarts", "重启次数"),
    "node": ("Node", "节点"),
    "events": ("Events", "事件"),
    "since": ("Since", "起始时间"),
    "time": ("Time", "时间"),
    "object": ("Object", "对象"),
    "log_tail": ("Log (last lines)", "日志（末尾）"),
    "log_kept": ("The pod is gone; the end of its log, kept by the operator:",
                 "Pod 已删除；以下是 operator 保留的日志末尾："),
    "no_log": ("No log yet.", "暂无日志。"),
    "inputs": ("Inputs", "输入数据"),
    "output": ("Output", "输出"),
    "image": ("Image", "镜像"),
    "status": ("Status", "状态"),
    "auto_refresh": ("Refreshes every {n} s", "每 {n} 秒自动刷新"),
    "team": ("Team (namespace)", "团队（命名空间）"),
    "user": ("User", "用户"),
    "dataspace_token": ("Dataspace token (for hitc)", "数据空间令牌（hitc 使用）"),
    "access_key": ("Access key", "访问密钥 ID"),
    "bucket": ("Bucket", "存储桶"),
    "reveal_secret": ("Show the secret key", "显示密钥"),
    "reveal_help": ("The secret key is your team's: it is shown only when you ask, and the console logs who asked.",
                    "密钥属于整个团队：仅在您请求时显示，控制台会记录请求者。"),
    "cluster_config": ("Cluster configuration — APP KEY", "集群配置 — APP KEY"),
    "appkey_help": ("An APP KEY is a revocable credential for traincli in your team's namespace, optionally for a "
                    "Kueue queue. Its token is shown once: paste the snippet into ~/.hobot/gpucluster.yaml.",
                    "APP KEY 是 traincli 在团队命名空间中使用的可吊销凭证，可指定 Kueue 队列。令牌只显示一次："
                    "请把下面的配置粘贴到 ~/.hobot/gpucluster.yaml。"),
    "queue": ("Queue (optional)", "队列（可选）"),
    "description": ("Description", "说明"),
    "create_appkey": ("Create APP KEY", "创建 APP KEY"),
    "new_appkey": ("New APP KEY — copy it now, it is not shown again", "新的 APP KEY — 请立即复制，之后不再显示"),
    "expires": ("Expires", "过期时间"),
    "created_by": ("Created by", "创建者"),
    "revoke": ("Revoke", "吊销"),
    "revoked": ("APP KEY {id} revoked: its token no longer works.", "APP KEY {id} 已吊销，其令牌立即失效。"),
    "no_appkeys": ("No APP KEYs yet.", "还没有 APP KEY。"),
    "appkeys_off": ("APP KEYs are not enabled on this console.", "此控制台未启用 APP KEY。"),
    "download_ca": ("Download the cluster's CA certificate", "下载集群 CA 证书"),
    "not_found": ("Not found", "未找到"),
    "error": ("Error", "错误"),
    "language": ("中文", "English"),
    "unauthorized": ("Log in first.", "请先登录。"),
    "back": ("Back", "返回"),
}


def pick_language(query: str | None, cookie: str | None, accept: str | None) -> str:
    for choice in (query, cookie):
        if choice in LANGUAGES:
            return choice
    return "zh" if (accept or "").lower().startswith("zh") else "en"


def text(key: str, lang: str, **values: object) -> str:
    if key not in _TEXT and key.startswith("phase."):
        return key[len("phase."):]   # a phase we have no words for (e.g. a newer operator's): as it is
    english, chinese = _TEXT[key]
    words = chinese if lang == "zh" else english
    return words.format(**values) if values else words
