from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        ALTER TABLE "apps" ADD "formation" JSONB NOT NULL DEFAULT '{}'::jsonb;
        ALTER TABLE "apps" ADD "default_branch" VARCHAR(255);
        -- An app without a branch follows its repository's default branch. Apps made
        -- before kept the branch they had ("main" unless given).
        ALTER TABLE "apps" ALTER COLUMN "branch" DROP NOT NULL;
        ALTER TABLE "apps" ALTER COLUMN "branch" DROP DEFAULT;
        ALTER TABLE "deployments" ALTER COLUMN "branch" DROP NOT NULL;
        ALTER TABLE "deployments" ALTER COLUMN "branch" DROP DEFAULT;
        -- Every organisation's rows: row-level security would hide them all from the
        -- migration (no organisation is set), so the owner lifts it for this transaction.
        ALTER TABLE "deployments" NO FORCE ROW LEVEL SECURITY;
        UPDATE "deployments" SET "branch" = NULL WHERE "branch" = '';
        ALTER TABLE "deployments" FORCE ROW LEVEL SECURITY;"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    return """
        ALTER TABLE "apps" DROP COLUMN "formation";
        ALTER TABLE "apps" DROP COLUMN "default_branch";
        ALTER TABLE "apps" NO FORCE ROW LEVEL SECURITY;
        ALTER TABLE "deployments" NO FORCE ROW LEVEL SECURITY;
        UPDATE "apps" SET "branch" = 'main' WHERE "branch" IS NULL;
        UPDATE "deployments" SET "branch" = '' WHERE "branch" IS NULL;
        ALTER TABLE "apps" FORCE ROW LEVEL SECURITY;
        ALTER TABLE "deployments" FORCE ROW LEVEL SECURITY;
        ALTER TABLE "apps" ALTER COLUMN "branch" SET NOT NULL;
        ALTER TABLE "apps" ALTER COLUMN "branch" SET DEFAULT 'main';
        ALTER TABLE "deployments" ALTER COLUMN "branch" SET NOT NULL;
        ALTER TABLE "deployments" ALTER COLUMN "branch" SET DEFAULT '';"""


MODELS_STATE = (
    "eJztXVtz2ziW/isovXS6SvEksuVk3FtbJdtKt2ZsKetLp3fGUyxIhCWuKYANkHY8Pf3fF+"
    "BFvIE0SZMSReMljgEckP4OCJwbzvmjtyY6MtnByDJuyAPCvRPwRw/DNeL/SfX1QQ9aVtgj"
    "Gmw4N93B0DI0Wwxzm+Gc2RQubN5zD02GeJOO2IIalm0Q8ZTeCMwRpIgCl+gEsBV5woDgBR"
    "/LbEKRDiADEFz/Mno/GB6DFWQr3rMgFu+xCYB8MF3yH3wcoMREB+K5OlnwBxt42dwjHGz8"
    "7iD+ty6RvUKUP+if/+LNBtbRd8SCX60H7d5Aph4D1NDFBG67Zj9bbtvt7eT8iztSvP5cWx"
    "DTWeNwtPVsrwjeDHccQz8QNKJviTCi0EZ6BGbsmKbPk6DJe2PeYFMHbV5VDxt0dA8dUzCr"
    "91/3Dl4IHgH3SeKfo//2Xy0yTNOmsxvtenyjab0Ub8UrJHjhNy0IFuvCwLYA6o8/vXlDQN"
    "zWnnjA2S+jq3eHxz+6EBBmL6nb6cLV+9MlhDb0SF3QQ5Tdnymcz1aQynEOxieQ5i9aBeOg"
    "IQQ5/AAC+AKAGoC0t4bfNRPhpb3iv3788CEH419HVy7MfJSLM+FfrPcxT/2ugdcn8A7xFV"
    "+CHN8xdtYuxhP+TpB/ZymsA9o2Y937dTL+Nr46AY8GekL0Dl+OL0/F72u0novfR+eXk+kJ"
    "gPrawHd49m0qOvnWgmhyCyrEo+MiLDrO5tBxkkHudqeJ3azMZxCnqodBL284W/sUjo8KwH"
    "x8lAmz6IrDbFF0b3wvA3FI0eb1X3WvqX0dQ9MkTxoXOcznNMqnhG8lEMuBTlAm0J5z0qbg"
    "3rRs97g8nc0uxMxrxn433YbJTQLoW7GJvfvo4s8HGbbbPJneJFDn0g8HhdCSkEfJFN4l8F"
    "5QJDDRoJ1G/Jz32MYaySGPUyZA133Sg+A/+7jB8D9Qn2H+EXsnRw5DbiaX4+ub0eXXGFfO"
    "Rzdj0TNwW58Tre+Sm9FmEvBtcvMLEL+Cf8ym46QQuhl384+eeCfo2ETDYsfRI4dc0BqgFu"
    "O6CZmtOawS35O0NXDef+W2MH5PGB1gkstp9N0y+HQV+BynVFxuM5cpeuTyc5WvOU6puNxm"
    "Lgcn7vxZK2fLSRG+wqyzP/x90YgTkTrpEmLj31A8vSS2EtI6jWZ7C68wQ94/SE1kUcjSUH"
    "8hFBlL/Hf0nDLmJID1LcSzxHT7CXHYGn5kFD5t7Liyhcb/wxFAnmx/Nro+G52PexlbRg1A"
    "3zJUxFDQzh3iRXxTm2QMXf4WYHp7cdFzF/YcLh6eINW12AoXPWRAEi2bsemu9WCdbIEYLl"
    "2MxB8jXn3jBrF6Uu+I9ZJjxCrqEsFAmCyMhbvCTgAES8MGFPFv2+Ca9TPQkWWSZ885QTAC"
    "hII1X0KAr4pHRJnEA1LHjBKHxz9TO4iLyr+UI0Q5Qlqy6SSsv4dFrL+H2dbfw5QXhH9Emk"
    "PNMgBHaToI8scPRd1Nuf6mlMNpTvmpWMqXEVJUgrll52cc5cFwWABkPioTY7cvDrH/zlp5"
    "qNOUCvJCkM8dg0+1IGsucegsDfnfrmfTjNWdokxaDYyFDf4DTIPZ+wd9DtICkpipIAD43e"
    "XotyT2Zxez0+ShKSY4TfCBy9zUDtAsw4YUoeJCdS5YhEosZxNsZ3hS/eEJyIVusXdQ89fl"
    "P94PPh59Ovp8eHz0mQ9x33PT8imHG2mHEsKPGsIL+mwJBFKY3qDvGaCmCLcno/R2IFnfjH"
    "+7yV/HG+PjxWz6czA8ubjj4K8QNO2VZkG71CmaINsi8H9pCvktHKE+asIuThxbkxyimRuI"
    "jLTSZlIJ9eMPe7KX6GTN5y4lnURIXnUgVlvOodoupCSbv8iBeN4uNPdGzknblDAjNzDDp9"
    "hiTEZgTNnbkAzq4MDXVli1D0m2uHlb68F2tu+jIor9UbZaf5RS6h8QsjSK+LplqMzGnaLb"
    "3q493JNN+57QdYZrJ3vbjhG1Y+MWj+3Mxv2E5itCHjSGFhTZ1QT0vDmUrF5aVleRd9lbUn"
    "cj7xxLr8j1OKXielu4Lgnd8d9exZeo+JLWQFxffMnOAiCu3bCAnjwMwu/svxAMofmxBe7A"
    "gjERwDLhAumAS4fQj03ou/cy7RXyYxjWCNtcQn1Eoo3KboO+ZiZpDAT0Qj+8WVTwQ7uCHw"
    "QDtZChJfd8ObUK2kxc0OJfczlcQwp1hKoI2G3C6+3SJYGNESlIldDXkqBiX/J4JcJ+6GpH"
    "gQ2PmpfxZBvR9ZWQhjJwR1GN7Yit0k4c3bDH2KbPPZl6Evb2c/UTMU4zybKYdjLDCCAxKy"
    "D3rgbhfc3M/Zp/YELhQFh/T7D53HfTy7xfrDi4IvGMeBDgD0orKnVNWihum6HfX6e5nBrL"
    "TF+N9NyUOGj8hfY6paX5CJ2/DgaHh58GHw6PPw+PPn0afv6w8dSku/JcNqeTn4XXph+1hQ"
    "VunGyNRrCqFPw+wfYcZB1hQeScLW0j7qxteH9twWkXAN/TZfktsr37G4IORu0fFgraP8yJ"
    "2T9Mh+zDhVwLyIVY7nzuAsaN5OGyIeUnexmMQ4oOYjwshPEwB+NhGmMd2dCQhVzlxL+FJC"
    "qMInYi1BFGQRx7QcqFZkVIOrjsDwdFdu9B9uY9kOQ1eyydPS5G1EGY608fVxZhBW4JcJUx"
    "XVl+225Ka7m7/8y/2Caxpp2Fd96yTWnR+4lF0kEzvkaQDnwywIQX3kvCzN8P26GX3h/IVy"
    "dnG/DzGVC+PGQZoGuaVSV9bsEO1M8xjimFs3mF88GQXZDNRjgY30V8a092a0EK16UUzZBC"
    "6Zm165kGY05G1qbsBR8j6uCqb8RU6IMmM7Xn+paiZMrFUdnFkZeeNA//3OSkigHFGYCJrw"
    "wV3WU2BB3cYeq3BAi5nj9fe0DynJ3ZOKcpOwh4/YIM1+5tRyLIFCsQElJv8UKb0ApLCi69"
    "6/H05sTVJ+/w7O8ngDzc4fHV1ezqBCBKCb3DV+Mvt9fj8xOuSd6LbN13WPguZ7eczE87cI"
    "dvp+fji8mv4ysxzuHvKAKPqXejb/esXHCtvswXE4zvXgao+rFdI8bgUgJv9vXPCEkXEN72"
    "dU/+wVmORMrJ1rBCCpXaqboq5ZnUNHGc8r2dlkurIKHtwtrfRpkuD7o50SU6bPaaT5CphV"
    "994av75dnrfz9vGhe5X35vYIOtKrE9QapqQbQ5iFC5mNV9rfZDqrz2bbivpe4X7f39ovPN"
    "ZfCeJCIi0tvPC4oIr5QXjIsQl4E8IvCOUFGF2hR/z4/ibhD0Mhr4pRs85E7A0wraff6vuB"
    "xEnkQkwxN/nPyaUW0zF8iP4K5PUUBXZUpoV+iEz5UU0pmun5CgS26f2tLvtT9Mwt+Gmlqm"
    "TZtOVT2IxjMri3g5w9bYCpaz/0epugd1/VlQ/USm5UyiG5LuIdyA/9dCizL2z2C8MnxWN3"
    "yqCgQ7dHPxt1kuhQ+5ZPBakq6DwQ6NxK/tYbwDH+ogveSC7/3P7fhWhCl41Hf46nY6nUx/"
    "PgHUwSJQ5g6LSIYTN3XeHf4ymlyI0ffQMMXo69uv46vr8bloY46FKEN6W+IcKD9QZTaw7I"
    "0qpOjCGbztLcq/jVG2hnKMSuXiU85G5Wx0a5BV4nqcUrka2+xqVC7lt8Fn3aGeX0l2ESjT"
    "HJugUiXxJHmcVKLa+iQNFfigAh/aD6kKfGhD4INKVKsS1apAkoxAkguy7OXGklz4eWgLhJ"
    "OInLUlQkpMg/8jAj0iNS9+YCJ1bB9A5ibEcPNjAD4Z4q+nAyMjhKTyTDWn1FB5aEXfzvLQ"
    "vqUktPWpJSq9bBfVeH72yi725dw0tl9zra9d7s6mIybEeVPGUxOM74Q7c9uOmsr1k+osnb"
    "RHTFBWFKXy7w/Ezaj8eiwU/pVAx+PqOwpzarNsk7o6fsy48uB19PPUU/RY/KLDNVlzPZDD"
    "yVVGaIOVW+UE6SebMo1gwZ8PCPYUTurePeCK5734vb9J6AgoWhrMFnFMBwdpjbWxpyhtdk"
    "+12fZH6+9x8K1APQ1uTu58f7xKaJgvyleIyW23rWGr+053w4GUUtFd12zLQjSUmtYa/WFP"
    "rqS3cwHvryPxFwSpPUdQqp2Fnf08DW0VDCuopV0iDuqCRRUhL0v+T1yDmhORwVAHKy6nEf"
    "oMLK5OeeilFbHXTKR0rT3VtZQM2kV319r7lMvoeRGS7at6u2FrM9XQlLzfWXm/O5Aqgf9t"
    "Cvz7Cm9rJf6AN/m17iWjcnUAwx+vueXjRSBhMV0gVac+mOgHBsgTBm5Vei9r1KYLEEusGE"
    "IZ0A3dq77lpkeH3kulwgvrfMAddp0+C4gxscEcAdvgSoZXDcz7pJj7SYF3Dn7A4gmuasL6"
    "4J53i8hF8RDT5CQPCLODg4MflT6yz/qINJIxD/5agxnfDAP2RQFsizi1dxogPyaIRLLIrb"
    "1HZAnkuuBFbSTJiCpv2HzCfBvyQ16yQeWkzNlQdBDjYSGMhzkYD9MY68iGhlnKVhQhUWEB"
    "9VuQHHtB1qWi1SMkHVz2h4Miu/cge/MepCp7UvSola32HiPqIMz1xxqVRViB+wK4KbPdbo"
    "weF2Rp4C/8CBDlfyTmjlh/P8/QYYqR2r03tMRlSS+FmVsh/L2B++ABWbYwCQB7RYltm5wx"
    "PwGMRPToivA/ybVVWJCxJ0J1rtUZstLkdU6sDBCt1n+zDRBozVdAmU1rQ9DUrrVVHiTyGB"
    "fZtfionDzGqUPBkKQfyKnfbHUT2voP23YbclQ0aeVo0pYc+pdIlBhgK8OSHfmR3twDf70Z"
    "V+y0z2a6tL5F0nnpMFXcovqH9BqXffYJS4mZody+nJs3oG2zhtD7dTL+Nr46AY8GekL0Dl"
    "+OL0/F797av8Oj88vJ9ARAfW3gOzz7NhWd5Al7Htzd595VeUvfytGiApe2FrgkTqKSsEZI"
    "FJwqaKklQUuuSPV6iG9ZpwOWIt9um8KVYgtbIsYnF362IB9dOwUNdyNgIwyxfQDGj4g+e5"
    "e+IVg4zCZrRIUIxMAK4iUT17vdOndelBFDaWPdayer2UCn1ITaa+DBcj6wYHybVYM2+daZ"
    "6SzL4BuMrwff3VqaGzbFKQUqG/puKVAtsc19NaH0OHfbc49xi48ofHwvxHmK3AuCjBlCwr"
    "OBRQnHUeRrYSs3PpeJvKP0WZQg6ouStaaI6CVcFuyL5C18OdwbdC1zvzUwvzrkW37Iq1Qv"
    "DdrxbEJKeTKD8V0EtxEJylmvIZVU9MtOfRkh6QTKecd3E9kvLUjhmlWrZCmjVUyowgSKhG"
    "sjjX12xGiEREWM5jOkQsToHta7tBDWBYTlOND7Op6euwUuffo7fMaX3OTqUtSw3Mh+d3j0"
    "9evFRLT5AmK6+OXV+G/jsxvRQtH/oYUt2sa/fZ1ciSb03TIoakkpzEAnLFc7Nk7ViX1uC5"
    "c63GuEJd00URqVTEpZQt6mJSRWbNzdPlkFrscpO8j1PeFyoTuGOloYeumDKU7VhVrNWziX"
    "AtDKf1FxSlVstM0fFJ9KYJPicLZeFVK8Sq3aH56qnE0tYYSK1WlprM5uPFB+BiKJDyrMTZ"
    "TthfLS+xT2Q63hYiWKAbi5Y6iDGXgn6gIYpil++zGscCdzMpUjLhRl7v7FKsq8VZ4lFT4S"
    "BjgcFglwOMwOcDhMi6Pha5US/WNknSut1kh+hrds3J1NLybT8Ylf/IX//uWL3+CVf2mXgV"
    "YZud6SkcuEzNYYQrgC35O0Si1vs1rO0MKhhv2sCcm18kacnGSL+/E9n6DsZvzl9uKCT8Yp"
    "7zAHcHo+ujo/AeKP07myIPxno3ON78//KxxoUH9PxEfeiu3YTwmpeX6ZsjlI5NS1mCk7Hf"
    "Max626ByBvHrVNtnmbDAvwVWB7iljxus28dg0kmuXMTWOhPaBSDiAZbffcQA0k+HBxE3ay"
    "snknk4SdU7zrr2m+4h9MWRNSlKZzEA+Gw0K5gIY5uYCGaaFBlKMlshjabJ9XjEi5vaq7vb"
    "wzlz5n7ymZOcdkpPWk4C7Cgw9NrXgvA9ng49Gno8+Hx0ebxGOblrx8Y+nc2jssw/PGl7by"
    "6CqPrvLo1uDRvbah+zYZbl2vu/+yb1cTjoiiGT5vVgjwJhGC/d6lA/4xI67wB2Xh++IqoO"
    "AG4O06skzyzIA30RwBQ+L7rW9ada+wBRtSP8f7W16iUYJMjiDT/kTOW9KCGtDqvQsqpe3U"
    "SToF9YtQK6Gw0bseqjSjkrP3Ws5uWWnGnboLi4Lb2sKM15xL/A/kjOrJtJewN1958cYJN0"
    "UJ3YWjZlNiApFcRVRGHOuD4fDjX4E/GxCz/eQGmmL0hJgNHEyRLfQSN0+ZGMbk6kttM9es"
    "wbyV4gSvlKizFZZqrrQanGgtg7lhEdCixiPHQo5zTuqIOFknYoR3kjWCOKyi1ziDXDmOC6"
    "iYGBOHCylrhEtdLkvSKYdEdYdEFEuNH8OlVH0JbffWfSMpmlRodjb63Q3N9kXeSmFoUUoV"
    "g9a2GLSUcWQ3yqWbvFyiVgZJzbMVSpEXvPA9R4uPJfgnMEcmEYmsbQI8Ywbz0m67Remc5Q"
    "pEqurIrjxWnkf5uVpgEOznqI27rlbXImWxkWJ17b9FuiVvTCPSWVA3s3wp3iRhJzTybQRc"
    "Mk1UoX+ULOpTQkwEccb+HKVLgD3308Y2gXawnWx3Qz6dzS5iUtDpJGnguBUlvd59dLHngw"
    "zP5p32nHPgiCVgIRJnwkuQRym3CPqmZW9RN8kCZhWZy7iRuaHooGatbjwrtbquG89exe6K"
    "V56jxEq5Vsp1pnJ9jRjLKFEV7e6/pGprzBtZWOWeU/LE6YBP5/lSF4Q8GMgv+A4BhVgna+"
    "DeUO3zAQYDnAoYtig4xVYyDbyuaZVC3nKFvNql8xoum7dZNW+gwpJDqfCGELosGXCWplQ5"
    "m5Vwp4Q7lbO5s3KdKkO8rQBdVRu3SMxoS2vjjhA1FqueROXwe3K1DRiOeUnNyAZURWW2Ky"
    "qzQrKNnaTZ2G+nhPioSiDsD+8gus2EQBFslwz8i5Bsv1rXngf97dSI9uf/AxyitD8="
)
