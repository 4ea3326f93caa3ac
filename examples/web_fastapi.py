"""A plain function as an HTTP endpoint: query parameters and a JSON body become its
arguments, its return value (a pydantic model here) the JSON answer.

apothic run examples/web_fastapi.py
curl -X POST http://127.0.0.1:8000/web-fastapi/quote -d '{"items": [{"name": "tea", "price": 3, "qty": 2}]}'
"""

import json
import urllib.request

from pydantic import BaseModel

import apothic

app = apothic.App("web-fastapi")


class Item(BaseModel):
    name: str
    price: float
    qty: int = 1


class Cart(BaseModel):
    items: list[Item]


class Quote(BaseModel):
    total: float
    count: int


@app.fastapi_endpoint(method="POST")
def quote(cart: Cart, discount: float = 0.0) -> Quote:
    """Prices a cart; ``discount`` comes from the query string."""
    total = sum(i.price * i.qty for i in cart.items) * (1 - discount)
    print(f"quoting {len(cart.items)} items: {total:.2f}")
    return Quote(total=round(total, 2), count=sum(i.qty for i in cart.items))


@app.local_entrypoint()
def main() -> None:
    url = quote.get_web_url()
    print("serving at", url)
    cart = {"items": [{"name": "tea", "price": 3.5, "qty": 2}, {"name": "cake", "price": 4}]}
    request = urllib.request.Request(
        f"{url}?discount=0.1",
        data=json.dumps(cart).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        print("POST ->", r.status, r.read().decode())
