"""The machine's ceiling: nginx serving the avatar file at `/avatar` with the same headers avatargen sends.

One worker process, as avatargen runs one uvicorn worker; keep-alive connections are never recycled
(uvicorn does not recycle them either); If-Modified-Since at or after the file's time gets a 304.
"""

from __future__ import annotations

from pathlib import Path

from avatargen.testing import Service
from benchmarks.wrk import ensure_installed

_MAIN = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{http}
}}
"""

_REFERENCE = """\
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    open_file_cache max=16;
    server {{
        listen 127.0.0.1:{port};
        etag off;
        if_modified_since before;
        location = /avatar {{
            alias {image};
            default_type image/webp;
            add_header Cache-Control "private, max-age={max_age}";
            add_header X-Avatar-Kind fallback;
            add_header X-Avatar-Id {image_id};
            add_header Vary Accept;
        }}
    }}
"""


def nginx(name: str, http: str, prefix: Path, port: int, health_path: str) -> Service:
    """nginx (installed from Debian if missing) with `http` in its http block; `prefix` holds its config, logs
    and pid."""
    binary = ensure_installed("nginx", ["nginx-light", "nginx"])
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(_MAIN.format(prefix=prefix, http=http))
    command = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"), "-g", "daemon off;"]
    return Service(name, command, port=port, log=prefix / "output.log", health_path=health_path)


def nginx_reference(image: Path, image_id: str, max_age: float, prefix: Path, port: int) -> Service:
    """nginx serving `image` at /avatar with avatargen's headers."""
    http = _REFERENCE.format(port=port, image=image, image_id=image_id, max_age=int(max_age))
    return nginx("nginx", http, prefix, port, "/avatar")
