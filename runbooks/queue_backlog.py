"""Message-center queue backlog: Redis list/stream or RabbitMQ depth, consumers, restart."""

from __future__ import annotations

import json

META = {
    "id": "queue-backlog",
    "title": {"zh-CN": "消息中心队列积压", "en": "Message-center queue backlog"},
    "symptoms": {
        "zh-CN": ["预约提醒、缴费通知等消息迟迟收不到",
                  "Redis 列表/Stream 或 RabbitMQ 队列长度持续增长",
                  "消费者进程不在运行或消费者数为 0"],
        "en": ["Appointment reminders and payment notices arrive late or never",
               "The Redis list/stream or RabbitMQ queue keeps growing",
               "Consumer processes are not running or the consumer count is 0"],
    },
    "classification": {"scope": "hospital", "type": "software", "severity": "experience"},
    "diagnosis": [
        ("diagnose_redis", "读取 Redis 列表长度（LLEN）和 Stream 长度、消费组待处理数与消费者数",
         "Read Redis list lengths (LLEN), stream lengths, pending entries and consumers"),
        ("diagnose_rabbitmq", "用 rabbitmqctl 或管理 API 读取 RabbitMQ 队列深度和消费者数",
         "Read RabbitMQ queue depth and consumers (rabbitmqctl or the management API)"),
        ("diagnose_consumers", "检查配置的消费者进程是否在运行",
         "Check that the configured consumer processes run"),
    ],
    "remediation": [
        ("remediate_restart_consumers", "重启（或启动）消费者进程",
         "Restart (or start) the consumer processes"),
    ],
    "verification": [
        ("verify_drained", "用 Testinfra 轮询，确认队列长度回落到阈值以下且消费者在运行",
         "With Testinfra, poll until the queues fall below the threshold and consumers run"),
    ],
    "owner": "消息中心 / message center",
    "reviewed": "2026-11-28",
    "settings": {
        "redis_host": "127.0.0.1",
        "redis_port": 6379,
        "redis_db": 0,
        "redis_password": "",
        "lists": [],                # Redis list keys
        "streams": [],              # Redis stream keys
        "rabbitmq_vhost": "/",
        "rabbitmq_queues": [],      # queue names; empty = RabbitMQ not checked
        "rabbitmq_api": "",         # e.g. http://127.0.0.1:15672; empty = rabbitmqctl
        "rabbitmq_user": "guest",
        "rabbitmq_password": "",
        "warning": 1000,            # queue length
        "critical": 10000,
        "consumers": [],            # [{name, pidfile | process, start, stop}]
        "drain_timeout": 120,       # seconds the verification waits for the queue to fall
    },
}


def _redis(rb) -> str:
    s = rb.settings
    auth = f"REDISCLI_AUTH={rb.quote(s['redis_password'])} " if s["redis_password"] else ""
    return (f"{auth}redis-cli --no-auth-warning -h {rb.quote(s['redis_host'])} "
            f"-p {int(s['redis_port'])} -n {int(s['redis_db'])}")


def redis_lengths(run, rb) -> dict[str, int]:
    """Lengths of the configured lists and streams; `run` is c.run or testinfra's run."""
    out = {}
    for key in rb.settings["lists"]:
        out[key] = int(run(f"{_redis(rb)} LLEN {rb.quote(key)}").stdout.strip() or 0)
    for key in rb.settings["streams"]:
        out[key] = int(run(f"{_redis(rb)} XLEN {rb.quote(key)}").stdout.strip() or 0)
    return out


def diagnose_redis(c, rb):
    s = rb.settings
    if not (s["lists"] or s["streams"]):
        return rb.result("unknown", rb.text("未配置 Redis 队列", "no Redis queues configured"))
    lengths = redis_lengths(c.run, rb)
    groups = {}
    for key in s["streams"]:
        res = c.run(f"{_redis(rb)} --json XINFO GROUPS {rb.quote(key)}")
        if res.ok and res.stdout.strip().startswith("["):
            groups[key] = [{"name": g.get("name"), "consumers": g.get("consumers"),
                            "pending": g.get("pending")} for g in json.loads(res.stdout)]
    rb.facts.setdefault("queues", {}).update(lengths)
    worst = max(lengths.values(), default=0)
    status = rb.level(worst, s["warning"], s["critical"])
    shown = ", ".join(f"{k}={v}" for k, v in lengths.items())
    return rb.result(status, rb.text(f"Redis 队列长度：{shown}", f"Redis queue lengths: {shown}"),
                     lengths=lengths, groups=groups)


def _rabbit_depths(c, rb) -> dict[str, dict]:
    s = rb.settings
    if s["rabbitmq_api"]:
        vhost = s["rabbitmq_vhost"].replace("/", "%2F")
        login = rb.quote(s["rabbitmq_user"] + ":" + s["rabbitmq_password"])
        url = rb.quote(s["rabbitmq_api"].rstrip("/") + "/api/queues/" + vhost)
        res = c.run(f"curl -sS -m 10 -u {login} {url}")
        rows = json.loads(res.stdout) if res.ok else []
        got = {q["name"]: {"messages": q.get("messages", 0), "consumers": q.get("consumers", 0)}
               for q in rows}
    else:
        res = c.run(f"rabbitmqctl -q list_queues -p {rb.quote(s['rabbitmq_vhost'])} "
                    "name messages consumers --formatter json")
        if not res.ok:
            raise RuntimeError(f"rabbitmqctl failed: {(res.stderr or res.stdout).strip()[:300]}")
        got = {q["name"]: {"messages": int(q["messages"]), "consumers": int(q["consumers"])}
               for q in json.loads(res.stdout or "[]")}
    return {name: got.get(name, {"messages": None, "consumers": None})
            for name in s["rabbitmq_queues"]}


def diagnose_rabbitmq(c, rb):
    s = rb.settings
    if not s["rabbitmq_queues"]:
        return rb.result("unknown", rb.text("未配置 RabbitMQ 队列",
                                            "no RabbitMQ queues configured"))
    depths = _rabbit_depths(c, rb)
    status = "normal"
    for q in depths.values():
        if q["messages"] is None:
            status = "critical"
            continue
        level = rb.level(q["messages"], s["warning"], s["critical"])
        if q["messages"] and not q["consumers"]:
            level = "critical"
        status = max(status, level, key=["normal", "warning", "critical"].index)
    rb.facts.setdefault("queues", {}).update({f"amqp:{k}": v["messages"]
                                              for k, v in depths.items()})
    shown = ", ".join(f"{k}={v['messages']} ({v['consumers']} consumers)"
                      for k, v in depths.items())
    return rb.result(status, rb.text(f"RabbitMQ 队列：{shown}", f"RabbitMQ queues: {shown}"),
                     queues=depths)


def _running(run, rb, consumer: dict) -> bool:
    if consumer.get("pidfile"):
        # a zombie answers kill -0 but is dead: read its state instead
        q = rb.quote(consumer["pidfile"])
        return bool(run(f"test -r {q} && st=$(ps -o stat= -p \"$(cat {q})\") && "
                        "case \"$st\" in Z*) ;; *) echo up ;; esac").stdout.strip())
    return bool(run(f"pgrep -f -- {rb.quote(consumer['process'])}").stdout.strip())


def diagnose_consumers(c, rb):
    consumers = rb.settings["consumers"]
    if not consumers:
        return rb.result("unknown", rb.text("未配置消费者", "no consumers configured"))
    state = {k["name"]: _running(c.run, rb, k) for k in consumers}
    rb.facts["consumers"] = state
    down = [n for n, up in state.items() if not up]
    status = "critical" if down else "normal"
    return rb.result(status, rb.text(f"未运行的消费者：{', '.join(down) or '无'}",
                                     f"consumers down: {', '.join(down) or 'none'}"), **state)


def remediate_restart_consumers(c, rb):
    done = 0
    for k in rb.settings["consumers"]:
        if not k.get("start"):
            continue
        up = rb.facts.get("consumers", {}).get(k["name"])
        command = k["start"] if not up or not k.get("stop") else f"{k['stop']}; {k['start']}"
        what = rb.text("重启" if up else "启动", "restart" if up else "start")
        done += rb.change(f"{what} {k['name']}", command)
    return rb.result("normal", rb.text(f"处理 {done} 个消费者", f"{done} consumers (re)started"))


def verify_drained(c, rb):
    s = rb.settings
    state: dict = {}

    def drained() -> bool:
        lengths = redis_lengths(rb.probe, rb) if (s["lists"] or s["streams"]) else {}
        state["lengths"] = lengths
        state["consumers"] = {k["name"]: _running(rb.probe, rb, k) for k in s["consumers"]}
        if s["rabbitmq_queues"]:
            depths = _rabbit_depths(c, rb)
            lengths.update({f"amqp:{k}": v["messages"] if v["messages"] is not None
                            else s["critical"] for k, v in depths.items()})
        low = all(v < s["warning"] for v in lengths.values())
        return low and all(state["consumers"].values())

    ok = rb.wait(drained, s["drain_timeout"], 1.0)
    shown = ", ".join(f"{k}={v}" for k, v in state["lengths"].items())
    return rb.result("normal" if ok else "critical", rb.text(
        f"队列长度 {shown}；消费者 {state['consumers']}",
        f"queue lengths {shown}; consumers {state['consumers']}"), **state)
