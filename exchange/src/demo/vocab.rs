//! The demo city's vocabulary: names, roads, hospitals, diagnoses, industries, categories.

pub(super) const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "徐", "孙", "胡", "朱", "高", "林",
    "何", "郭", "马", "罗", "梁", "宋", "郑", "谢", "韩", "唐", "冯", "于", "董", "萧",
];
pub(super) const COMPOUND: &[&str] = &["欧阳", "司马", "诸葛", "上官", "东方", "慕容"];
pub(super) const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明",
    "超", "秀", "霞", "平", "刚", "桂", "英", "华", "玉", "兰", "文", "斌", "宇", "浩", "凯", "鹏",
    "婷", "雪", "琳", "晨", "欣", "怡", "博", "思",
];
pub(super) const ROADS: &[&str] = &[
    "友谊路",
    "南京路",
    "卫津路",
    "黄河道",
    "大沽南路",
    "解放北路",
    "中山路",
    "红旗路",
    "复康路",
    "西康路",
    "成都道",
    "重庆道",
    "十一经路",
    "光华路",
    "芥园道",
    "水上公园路",
];
pub(super) const HOSPITALS: &[&str] = &[
    "天津医科大学总医院",
    "天津市第一中心医院",
    "天津市人民医院",
    "天津市胸科医院",
    "天津市中医药研究院附属医院",
    "天津市第三中心医院",
    "社区卫生服务中心",
];
/// (ICD-10 code, chronic).
pub(super) const DIAGNOSES: &[(&str, bool)] = &[
    ("I10", true),
    ("E11.9", true),
    ("I25.1", true),
    ("J45.9", true),
    ("J44.9", true),
    ("J06.9", false),
    ("K29.7", false),
    ("M54.5", false),
    ("N39.0", false),
    ("S52.5", false),
    ("R51", false),
    ("H10.9", false),
];
pub(super) const INDUSTRIES: &[&str] = &[
    "retail",
    "catering",
    "logistics",
    "software",
    "manufacturing",
    "construction",
    "healthcare",
    "education",
    "finance",
    "property",
];
pub(super) const INDUSTRY_CN: &[&str] = &[
    "商贸", "餐饮", "物流", "科技", "制造", "建设", "医疗", "教育", "投资", "物业",
];
pub(super) const WORDS: &[&str] = &[
    "华泰", "津港", "海河", "恒信", "和兴", "众诚", "鑫源", "宏达", "瑞丰", "金桥", "新天", "博远",
    "德润", "永安", "嘉禾", "盛世",
];
pub(super) const CATEGORIES: &[&str] = &[
    "noise",
    "sanitation",
    "traffic",
    "heating",
    "water_supply",
    "property_management",
    "consumer_rights",
    "public_safety",
];
pub(super) const JOB_TYPES: &[(&str, f64)] = &[
    ("regular", 0.70),
    ("platform_delivery", 0.12),
    ("ride_hailing", 0.10),
    ("domestic_service", 0.08),
];
pub(super) const MOBILE_PREFIXES: &[&str] = &[
    "130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152", "155",
    "156", "157", "158", "159", "176", "177", "180", "181", "186", "187", "188", "189",
];
