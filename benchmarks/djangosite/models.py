from __future__ import annotations

from django.db import models

# The tables are made by benchmarks/frameworks.py (bench_product, bench_order), as the
# SQLAlchemy half maps the same ones.


class Product(models.Model):  # type: ignore[misc]
    name = models.CharField(max_length=100)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.IntegerField()

    class Meta:
        db_table = "bench_product"


class Order(models.Model):  # type: ignore[misc]
    product = models.ForeignKey(Product, on_delete=models.CASCADE)
    quantity = models.IntegerField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "bench_order"
